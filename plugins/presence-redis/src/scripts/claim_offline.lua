-- KEYS: user set, claim key, online set. ARGV: claim ttl in ms, user.
-- Returns 1 when the user has no connection and this caller is the first to claim announcing it.
if redis.call('SCARD', KEYS[1]) > 0 then return 0 end
redis.call('SREM', KEYS[3], ARGV[2])
if redis.call('SET', KEYS[2], '1', 'NX', 'PX', ARGV[1]) then return 1 end
return 0

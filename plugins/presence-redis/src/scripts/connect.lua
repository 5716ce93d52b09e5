-- KEYS: user set, node hash, online set, own alive key. ARGV: member, conn, user.
-- Returns 1 for the user's first connection, 0 otherwise, -1 when this node must re-register first.
if redis.call('EXISTS', KEYS[4]) == 0 then return -1 end
local added = redis.call('SADD', KEYS[1], ARGV[1])
redis.call('HSET', KEYS[2], ARGV[2], ARGV[3])
redis.call('SADD', KEYS[3], ARGV[3])
if added == 1 and redis.call('SCARD', KEYS[1]) == 1 then return 1 end
return 0

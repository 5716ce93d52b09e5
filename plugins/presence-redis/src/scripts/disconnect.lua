-- KEYS: user set, node hash, online set, own alive key. ARGV: member, conn, user.
-- Returns 1 when it removed the user's last connection, 0 otherwise, -1 when this node must re-register first.
if redis.call('EXISTS', KEYS[4]) == 0 then return -1 end
local removed = redis.call('SREM', KEYS[1], ARGV[1])
redis.call('HDEL', KEYS[2], ARGV[2])
if removed == 1 and redis.call('SCARD', KEYS[1]) == 0 then
  redis.call('SREM', KEYS[3], ARGV[3])
  return 1
end
return 0

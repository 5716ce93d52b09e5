-- A node's heartbeat, and the nodes alive (see nodes.rs).
-- KEYS: the nodes sorted set.
-- ARGV: this node's id, "beat", "leave" or "list", alive window in ms, forget after ms.
-- Scores are the Redis server's clock, so nodes' clocks need not agree.
local now = redis.call('TIME')
local ms = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
if ARGV[2] == 'beat' then
  redis.call('ZADD', KEYS[1], ms, ARGV[1])
  redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ms - tonumber(ARGV[4]))
  return ms
end
if ARGV[2] == 'leave' then
  return redis.call('ZREM', KEYS[1], ARGV[1])
end
return redis.call('ZRANGEBYSCORE', KEYS[1], ms - tonumber(ARGV[3]), '+inf')

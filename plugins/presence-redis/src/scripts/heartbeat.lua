-- KEYS: own alive key, nodes set. ARGV: ttl in ms, node id.
-- Refreshes the heartbeat; returns 1 when the key was still there, 0 when it was gone.
local existed = redis.call('EXISTS', KEYS[1])
redis.call('SET', KEYS[1], '1', 'PX', ARGV[1])
redis.call('SADD', KEYS[2], ARGV[2])
return existed

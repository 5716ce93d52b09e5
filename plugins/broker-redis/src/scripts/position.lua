-- A room's newest position, creating its epoch when it has none, so the position pins one.
-- KEYS: the room's meta hash. ARGV: a candidate epoch, meta ttl in ms.
-- Returns { epoch, n }.
redis.call('HSETNX', KEYS[1], 'epoch', ARGV[1])
redis.call('PEXPIRE', KEYS[1], ARGV[2])
local v = redis.call('HMGET', KEYS[1], 'epoch', 'n')
return { v[1], tonumber(v[2] or '0') }

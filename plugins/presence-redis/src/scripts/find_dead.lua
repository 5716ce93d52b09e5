-- KEYS: nodes set. ARGV: alive key prefix. Returns the registered nodes whose heartbeat expired.
local dead = {}
for _, n in ipairs(redis.call('SMEMBERS', KEYS[1])) do
  if redis.call('EXISTS', ARGV[1] .. n) == 0 then table.insert(dead, n) end
end
return dead

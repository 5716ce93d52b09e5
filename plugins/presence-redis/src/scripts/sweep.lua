-- KEYS: dead node's hash, online set, nodes set, dead node's alive key.
-- ARGV: user key prefix, dead node id, `force` to sweep even a live node (withdrawal).
-- Returns the users left without connections.
if ARGV[3] ~= 'force' and redis.call('EXISTS', KEYS[4]) == 1 then return {} end
local entries = redis.call('HGETALL', KEYS[1])
local gone = {}
for i = 1, #entries, 2 do
  local ukey = ARGV[1] .. entries[i + 1]
  if redis.call('SREM', ukey, ARGV[2] .. '/' .. entries[i]) == 1 and redis.call('SCARD', ukey) == 0 then
    redis.call('SREM', KEYS[2], entries[i + 1])
    table.insert(gone, entries[i + 1])
  end
end
redis.call('DEL', KEYS[1])
redis.call('SREM', KEYS[3], ARGV[2])
if ARGV[3] == 'force' then redis.call('DEL', KEYS[4]) end
return gone

-- A room's kept events after a position, oldest first.
-- KEYS: the stream, the room's meta hash.
-- ARGV: the position's epoch ("" for none), its number, the most to return.
-- Returns { epoch or false, newest n, complete (1/0), n1, t1, d1, n2, t2, d2, ... } (t: when
-- it was kept, in microseconds; 0 for an entry without one).
local meta = redis.call('HMGET', KEYS[2], 'epoch', 'n')
local epoch, last = meta[1], tonumber(meta[2] or '0')
local limit = tonumber(ARGV[3])
local out = { epoch or false, last, 0 }
if not epoch then
  -- No stream at all: nothing was kept; complete only for "from the start".
  if ARGV[1] == '' then out[3] = 1 end
  return out
end
local after = 0
local complete = 1
if ARGV[1] ~= '' then
  if ARGV[1] ~= epoch or tonumber(ARGV[2]) > last then
    complete = 0
  else
    after = tonumber(ARGV[2])
  end
end
local wanted = last - after
if wanted <= 0 then
  out[3] = complete
  return out
end
local entries = redis.call('XREVRANGE', KEYS[1], '+', '-', 'COUNT', wanted)
-- Newest first: the oldest returned must follow `after` directly, or some were lost.
local count = #entries
if count == 0 then
  complete = 0
else
  local oldest = entries[count][2]
  local first_n
  for i = 1, #oldest, 2 do
    if oldest[i] == 'n' then first_n = tonumber(oldest[i + 1]) end
  end
  if first_n ~= after + 1 then complete = 0 end
end
out[3] = complete
local taken = 0
for i = count, 1, -1 do
  if taken >= limit then break end
  local fields = entries[i][2]
  local n, t, d = nil, '0', nil
  for j = 1, #fields, 2 do
    local f = fields[j]
    if f == 'n' then n = fields[j + 1] elseif f == 't' then t = fields[j + 1] elseif f == 'd' then d = fields[j + 1] end
  end
  table.insert(out, n)
  table.insert(out, t)
  table.insert(out, d)
  taken = taken + 1
end
return out

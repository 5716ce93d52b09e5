-- Keeps one room event in the room's stream and publishes it, in one step, so the stream's
-- order is the channel's order.
-- KEYS: the stream, the room's meta hash (epoch, n).
-- ARGV: channel, the delivery as JSON (an object), the envelope's other fields as JSON
--   object members or "" (`"skip":"node"`), max length, ttl in ms, meta ttl in ms, a
--   candidate epoch, "1" for sharded pub/sub.
-- Returns { epoch, n }.
redis.call('HSETNX', KEYS[2], 'epoch', ARGV[7])
local epoch = redis.call('HGET', KEYS[2], 'epoch')
local n = redis.call('HINCRBY', KEYS[2], 'n', 1)
local now = redis.call('TIME')
-- `t`, the server's clock in microseconds, orders the events of several rooms on replay.
local t = tostring(now[1]) .. string.format('%06d', tonumber(now[2]))
redis.call('XADD', KEYS[1], 'MAXLEN', ARGV[4], '*', 'n', n, 't', t, 'd', ARGV[2])
local oldest = (tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)) - tonumber(ARGV[5])
if oldest > 0 then redis.call('XTRIM', KEYS[1], 'MINID', tostring(oldest)) end
redis.call('PEXPIRE', KEYS[1], ARGV[5])
redis.call('PEXPIRE', KEYS[2], ARGV[6])
local extra = ARGV[3]
if extra ~= '' then extra = extra .. ',' end
local message = '{' .. extra .. '"p":"' .. epoch .. ':' .. n .. '","d":' .. ARGV[2] .. '}'
if ARGV[8] == '1' then
  redis.call('SPUBLISH', ARGV[1], message)
else
  redis.call('PUBLISH', ARGV[1], message)
end
return { epoch, n }

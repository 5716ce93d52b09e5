-- The control log (see control_log.rs).
-- KEYS: the log stream.
-- ARGV: "add", the request (JSON), at most this many entries, entries kept this many ms,
--    the stream kept this many ms after its last entry;
--    or "read", the first id to read, at most this many entries;
--    or "deleted": the newest id the log may have deleted ("missing" when there is no
--    log, "unknown" when this Redis does not keep it).
--
-- Trimming does not move a stream's `max-deleted-entry-id` (only XDEL does), so "add"
-- trims exactly and records a bound itself, with XSETID (Redis 7.0+; an older Redis keeps
-- none and the reader assumes the worst).
local function ms_of(id)
  return tonumber(string.match(id or '', '^(%d+)')) or 0
end

local function deleted_ms(key)
  local info = redis.call('XINFO', 'STREAM', key)
  for i = 1, #info, 2 do
    if info[i] == 'max-deleted-entry-id' then
      return ms_of(info[i + 1]), info[i + 1]
    end
  end
  return nil, nil
end

if ARGV[1] == 'add' then
  local max, keep, life = tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5])
  local fresh = redis.call('EXISTS', KEYS[1]) == 0
  local id = redis.call('XADD', KEYS[1], '*', 'r', ARGV[2])
  local ms = ms_of(id)
  -- The newest time (ms) an entry deleted now, or before this log began, may carry.
  local bound = 0
  if fresh then
    -- An older log expired `life` after its last entry: all it held is older than that.
    bound = ms - life
  end
  if redis.call('XTRIM', KEYS[1], 'MINID', string.format('%d', ms - keep)) > 0 then
    bound = math.max(bound, ms - keep - 1)
  end
  local len = redis.call('XLEN', KEYS[1])
  if len > max then
    local old = redis.call('XRANGE', KEYS[1], '-', '+', 'COUNT', len - max)
    redis.call('XTRIM', KEYS[1], 'MAXLEN', max)
    bound = math.max(bound, ms_of(old[#old][1]))
  end
  if bound > 0 then
    local had = deleted_ms(KEYS[1])
    if had ~= nil and bound > had then
      pcall(redis.call, 'XSETID', KEYS[1], id, 'MAXDELETEDID', string.format('%d-0', bound))
    end
  end
  redis.call('PEXPIRE', KEYS[1], life)
  return id
end
if ARGV[1] == 'deleted' then
  if redis.call('EXISTS', KEYS[1]) == 0 then
    return 'missing'
  end
  local _, id = deleted_ms(KEYS[1])
  return id or 'unknown'
end
return redis.call('XRANGE', KEYS[1], ARGV[2], '+', 'COUNT', ARGV[3])

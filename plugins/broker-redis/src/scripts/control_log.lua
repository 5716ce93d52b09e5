-- The control log (see control_log.rs).
-- KEYS: the log stream.
-- ARGV: "add", the request (JSON), at most this many entries, kept this many ms;
--    or "read", the first id to read, at most this many entries.
if ARGV[1] == 'add' then
  local id = redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[3], '*', 'r', ARGV[2])
  redis.call('PEXPIRE', KEYS[1], ARGV[4])
  return id
end
return redis.call('XRANGE', KEYS[1], ARGV[2], '+', 'COUNT', ARGV[3])

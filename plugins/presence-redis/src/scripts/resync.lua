-- KEYS: own node hash, online set, own alive key, nodes set, epoch key.
-- ARGV: user key prefix, node id, ttl in ms, a candidate epoch, the epoch this node last
-- registered in (or ""), then (conn, user, owed) triples of every live local connection,
-- `owed` being `1` for a connection whose `user:online` is still owed (its connect never
-- reached Redis). Makes Redis's view of this node equal to the list. Returns the epoch (a
-- random value set by the first node to register after Redis started empty), the number of
-- users gone, the users whose last connection it removed, then a (user, conn) pair per
-- owed connection that is its user's first anywhere. A user whose stale connection is
-- replaced by an owed one is neither.
redis.call('SET', KEYS[5], ARGV[4], 'NX')
local epoch = redis.call('GET', KEYS[5])
-- Redis kept its data (the same epoch) but this node's registration is gone: another node
-- swept it (this node was cut off longer than the TTL) and announced its users offline,
-- so every connection is owed its user:online again.
local swept = ARGV[5] ~= '' and ARGV[5] == epoch and redis.call('EXISTS', KEYS[1]) == 0
local want = {}
for i = 6, #ARGV, 3 do want[ARGV[i]] = ARGV[i + 1] end
local emptied = {}
local have = redis.call('HGETALL', KEYS[1])
for i = 1, #have, 2 do
  local conn, user = have[i], have[i + 1]
  if want[conn] ~= user then
    redis.call('HDEL', KEYS[1], conn)
    local ukey = ARGV[1] .. user
    if redis.call('SREM', ukey, ARGV[2] .. '/' .. conn) == 1 and redis.call('SCARD', ukey) == 0 then
      emptied[user] = true
    end
  end
end
local function add(conn, user)
  redis.call('HSET', KEYS[1], conn, user)
  redis.call('SADD', ARGV[1] .. user, ARGV[2] .. '/' .. conn)
  redis.call('SADD', KEYS[2], user)
end
local function owed(i) return swept or ARGV[i + 2] == '1' end
for i = 6, #ARGV, 3 do
  if not owed(i) then add(ARGV[i], ARGV[i + 1]) end
end
local online = {}
for i = 6, #ARGV, 3 do
  if owed(i) then
    local conn, user = ARGV[i], ARGV[i + 1]
    local first = redis.call('SCARD', ARGV[1] .. user) == 0 and not emptied[user]
    add(conn, user)
    if first then
      table.insert(online, user)
      table.insert(online, conn)
    end
  end
end
local gone = {}
for user in pairs(emptied) do
  if redis.call('SCARD', ARGV[1] .. user) == 0 then
    redis.call('SREM', KEYS[2], user)
    table.insert(gone, user)
  end
end
local result = { epoch, tostring(#gone) }
for _, user in ipairs(gone) do table.insert(result, user) end
for _, v in ipairs(online) do table.insert(result, v) end
redis.call('SET', KEYS[3], '1', 'PX', ARGV[3])
redis.call('SADD', KEYS[4], ARGV[2])
return result

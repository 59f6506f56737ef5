-- Hand out due wakeups of one session, never of a closed one: removed, or leased (kept with
-- their due time moved to the end of the lease, so an unacknowledged one comes back).
-- KEYS: 1 session hash, 2 wakeup zset, 3 wakeup payload hash, 4 partition due zset
-- ARGV: 1 session id, 2 now ms, 3 max count, 4 lease end ms (0: remove)
local cur = redis.call('HMGET', KEYS[1], 'epoch', 'status')
local epoch_text = cur[1] or '0'
if cur[2] == 'closed' then
  redis.call('DEL', KEYS[2], KEYS[3])
  redis.call('ZREM', KEYS[4], ARGV[1])
  return {epoch_text, {}}
end
local lease_end = tonumber(ARGV[4])
local due = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', ARGV[2], 'WITHSCORES', 'LIMIT', 0, tonumber(ARGV[3]))
local out = {}
for i = 1, #due, 2 do
  local id, score = due[i], due[i + 1]
  local payload = redis.call('HGET', KEYS[3], id)
  if lease_end > 0 and payload then
    redis.call('ZADD', KEYS[2], ARGV[4], id)
  else
    redis.call('ZREM', KEYS[2], id)
    redis.call('HDEL', KEYS[3], id)
  end
  if payload then
    out[#out + 1] = id
    out[#out + 1] = score
    out[#out + 1] = payload
  end
end
local next_due = redis.call('ZRANGE', KEYS[2], 0, 0, 'WITHSCORES')
if #next_due > 0 then
  redis.call('ZADD', KEYS[4], next_due[2], ARGV[1])
else
  redis.call('ZREM', KEYS[4], ARGV[1])
end
return {epoch_text, out}

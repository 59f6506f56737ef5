-- Close a session and cancel its wakeups, fenced by epoch.
-- KEYS: 1 session hash, 2 wakeup zset, 3 wakeup payload hash, 4 partition due zset,
--       5 partition marks hash, 6 partition event stream
-- ARGV: 1 stream maxlen, 2 channel, 3 partition, 4 session id, 5 epoch ('' = current),
--       6 class, 7 rule, 8 reason, 9 detail, 10 upstream status (''), 11 observed at ms
local cur = redis.call('HMGET', KEYS[1], 'epoch', 'status', 'opened_at_ms')
local current = tonumber(cur[1]) or 0
local current_text = cur[1] or '0'
local epoch, epoch_text = current, current_text
if ARGV[5] ~= '' then
  epoch = tonumber(ARGV[5])
  if epoch == nil then
    return redis.error_reply('ERR haltgate close: epoch is not a number')
  end
  epoch_text = ARGV[5]
else
  local opened = tonumber(cur[3])
  if opened ~= nil and tonumber(ARGV[11]) < opened then
    return {'fenced', current_text}
  end
end
if epoch < current then
  return {'fenced', current_text}
end
-- Only a reopen starts a generation: a later epoch closes the current one.
if epoch > current then
  epoch, epoch_text = current, current_text
end
if cur[2] == 'closed' then
  -- Rewritten unchanged, so the answer is a write of this connection: a WAIT on it then also
  -- covers the closure found (replication is in order), which may have been written through
  -- a connection that is gone.
  redis.call('HSET', KEYS[1], 'status', 'closed')
  return {'already', redis.call('HGETALL', KEYS[1])}
end
-- Writes that free memory come first, so the close completes even near maxmemory.
local cancelled = redis.call('ZCARD', KEYS[2])
redis.call('DEL', KEYS[2], KEYS[3])
redis.call('ZREM', KEYS[4], ARGV[4])
redis.call('HDEL', KEYS[1], 'upstream_status')
redis.call('HSET', KEYS[1], 'epoch', epoch_text, 'status', 'closed', 'class', ARGV[6],
  'rule', ARGV[7], 'reason', ARGV[8], 'detail', ARGV[9], 'closed_at_ms', ARGV[11])
if ARGV[10] ~= '' then
  redis.call('HSET', KEYS[1], 'upstream_status', ARGV[10])
end
redis.call('HSET', KEYS[5], ARGV[4], cjson.encode({epoch = epoch_text, status = 'closed',
  closed_epoch = epoch_text, class = ARGV[6], rule = ARGV[7], reason = ARGV[8],
  closed_at_ms = ARGV[11]}))
local fields = {'kind', 'closed', 'session', ARGV[4], 'epoch', epoch_text, 'class', ARGV[6],
  'rule', ARGV[7], 'reason', ARGV[8], 'detail', ARGV[9], 'cancelled', tostring(cancelled),
  'at_ms', ARGV[11]}
if ARGV[10] ~= '' then
  fields[#fields + 1] = 'upstream_status'
  fields[#fields + 1] = ARGV[10]
end
emit(KEYS[6], ARGV[1], ARGV[2], ARGV[3], fields)
return {'closed', tostring(cancelled), redis.call('HGETALL', KEYS[1])}

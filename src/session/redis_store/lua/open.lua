-- Register, reopen (epoch + 1) or update a session.
-- KEYS: 1 session hash, 2 partition marks hash, 3 partition event stream
-- ARGV: 1 stream maxlen, 2 channel, 3 partition, 4 session id, 5 '1' if scope given,
--       6 scope JSON ('' = clear), 7 '1' if resume given, 8 resume ('' = clear), 9 at ms
local cur = redis.call('HMGET', KEYS[1], 'epoch', 'status')
local kind = 'opened'
local epoch_text = cur[1]
if not epoch_text then
  epoch_text = '0'
  redis.call('HSET', KEYS[1], 'epoch', '0', 'status', 'open', 'opened_at_ms', ARGV[9])
elseif cur[2] == 'closed' then
  kind = 'reopened'
  epoch_text = string.format('%d', tonumber(epoch_text) + 1)
  redis.call('HDEL', KEYS[1], 'class', 'rule', 'reason', 'detail', 'upstream_status', 'closed_at_ms')
  redis.call('HSET', KEYS[1], 'epoch', epoch_text, 'status', 'open', 'opened_at_ms', ARGV[9])
  local mark = redis.call('HGET', KEYS[2], ARGV[4])
  if mark then
    mark = cjson.decode(mark)
  else
    mark = {}
  end
  mark.epoch = epoch_text
  mark.status = 'open'
  redis.call('HSET', KEYS[2], ARGV[4], cjson.encode(mark))
end
if ARGV[5] == '1' then
  if ARGV[6] == '' then
    redis.call('HDEL', KEYS[1], 'scope')
  else
    redis.call('HSET', KEYS[1], 'scope', ARGV[6])
  end
end
if ARGV[7] == '1' then
  if ARGV[8] == '' then
    redis.call('HDEL', KEYS[1], 'resume')
  else
    redis.call('HSET', KEYS[1], 'resume', ARGV[8])
  end
end
emit(KEYS[3], ARGV[1], ARGV[2], ARGV[3],
  {'kind', kind, 'session', ARGV[4], 'epoch', epoch_text, 'at_ms', ARGV[9]})
return redis.call('HGETALL', KEYS[1])

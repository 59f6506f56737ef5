-- Clear the resume id of the session at the given epoch.
-- KEYS: 1 session hash, 2 partition event stream
-- ARGV: 1 stream maxlen, 2 channel, 3 partition, 4 session id, 5 epoch ('' = current),
--       6 rule, 7 at ms
local cur = redis.call('HMGET', KEYS[1], 'epoch', 'resume')
if not cur[2] then
  return 0
end
local epoch_text = cur[1] or '0'
if ARGV[5] ~= '' and tonumber(ARGV[5]) ~= tonumber(epoch_text) then
  return 0
end
redis.call('HDEL', KEYS[1], 'resume')
emit(KEYS[2], ARGV[1], ARGV[2], ARGV[3],
  {'kind', 'resume_reset', 'session', ARGV[4], 'epoch', epoch_text, 'rule', ARGV[6], 'at_ms', ARGV[7]})
return 1

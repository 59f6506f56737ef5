-- Schedule a wakeup unless the session is closed.
-- KEYS: 1 session hash, 2 wakeup zset, 3 wakeup payload hash, 4 partition due zset
-- ARGV: 1 session id, 2 wakeup id, 3 due ms, 4 payload JSON
local cur = redis.call('HMGET', KEYS[1], 'epoch', 'status')
if cur[2] == 'closed' then
  return {'closed'}
end
redis.call('ZADD', KEYS[2], ARGV[3], ARGV[2])
redis.call('HSET', KEYS[3], ARGV[2], ARGV[4])
-- LT keeps the session's earliest due time in the partition index.
redis.call('ZADD', KEYS[4], 'LT', ARGV[3], ARGV[1])
return {'added', cur[1] or '0'}

-- Remove one wakeup of a session (a leased one whose work is done).
-- KEYS: 1 session hash (unused, keeps the key list of wakeup scripts alike), 2 wakeup zset,
--       3 wakeup payload hash, 4 partition due zset
-- ARGV: 1 session id, 2 wakeup id
local removed = redis.call('ZREM', KEYS[2], ARGV[2])
redis.call('HDEL', KEYS[3], ARGV[2])
if removed == 0 then
  return 0
end
local next_due = redis.call('ZRANGE', KEYS[2], 0, 0, 'WITHSCORES')
if #next_due > 0 then
  redis.call('ZADD', KEYS[4], next_due[2], ARGV[1])
else
  redis.call('ZREM', KEYS[4], ARGV[1])
end
return 1

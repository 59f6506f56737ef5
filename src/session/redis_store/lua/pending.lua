-- Pending wakeups of one session with their payloads.
-- KEYS: 1 session hash, 2 wakeup zset, 3 wakeup payload hash
local epoch_text = redis.call('HGET', KEYS[1], 'epoch') or '0'
return {epoch_text, redis.call('ZRANGE', KEYS[2], 0, -1, 'WITHSCORES'), redis.call('HGETALL', KEYS[3])}

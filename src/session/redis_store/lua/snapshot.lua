-- A partition's marks and credentials with the last stream id, read atomically.
-- KEYS: 1 partition marks hash, 2 credentials hash, 3 generations hash, 4 event stream
local last = '0-0'
local tail = redis.call('XREVRANGE', KEYS[4], '+', '-', 'COUNT', 1)
if #tail > 0 then
  last = tail[1][1]
end
return {last, redis.call('HGETALL', KEYS[1]), redis.call('HGETALL', KEYS[2]), redis.call('HGETALL', KEYS[3])}

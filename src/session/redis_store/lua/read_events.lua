-- Read a partition's events after a stream id, and say whether any entry after it was trimmed.
-- KEYS: 1 partition event stream
-- ARGV: 1 exclusive start id, 2 count
if redis.call('EXISTS', KEYS[1]) == 0 then
  return {'0-0', {}}
end
local info = redis.call('XINFO', 'STREAM', KEYS[1])
local max_deleted = '0-0'
for i = 1, #info, 2 do
  if info[i] == 'max-deleted-entry-id' then
    max_deleted = info[i + 1]
  end
end
return {max_deleted, redis.call('XRANGE', KEYS[1], '(' .. ARGV[1], '+', 'COUNT', tonumber(ARGV[2]))}

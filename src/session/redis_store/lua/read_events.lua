-- Read a partition's events after a stream id, with what the reader needs to detect a gap:
-- the first retained entry id and how many entries trimming removed (the scripts never XDEL).
-- KEYS: 1 partition event stream
-- ARGV: 1 exclusive start id, 2 count
if redis.call('EXISTS', KEYS[1]) == 0 then
  return {'0-0', '0', {}}
end
local info = redis.call('XINFO', 'STREAM', KEYS[1])
local length, added, first = 0, 0, '0-0'
for i = 1, #info, 2 do
  local name = info[i]
  if name == 'length' then
    length = info[i + 1]
  elseif name == 'entries-added' then
    added = info[i + 1]
  elseif name == 'first-entry' and type(info[i + 1]) == 'table' then
    first = info[i + 1][1]
  end
end
local trimmed = string.format('%d', added - length)
return {first, trimmed, redis.call('XRANGE', KEYS[1], '(' .. ARGV[1], '+', 'COUNT', tonumber(ARGV[2]))}

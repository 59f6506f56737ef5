-- Shared by every writing script: append one event to the partition's stream and
-- announce it on the live channel. `fields` is a flat list of name, value strings.
local function emit(stream, maxlen, channel, partition, fields)
  local id = redis.call('XADD', stream, 'MAXLEN', '~', maxlen, '*', unpack(fields))
  local flat = {}
  for i = 1, #fields, 2 do
    flat[fields[i]] = fields[i + 1]
  end
  redis.call('PUBLISH', channel, cjson.encode({p = partition, id = id, f = flat}))
  return id
end

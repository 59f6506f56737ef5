-- Unblock a credential; its generation goes up by one.
-- KEYS: 1 partition credentials hash, 2 partition generations hash, 3 partition event stream
-- ARGV: 1 stream maxlen, 2 channel, 3 partition, 4 fingerprint, 5 at ms
if redis.call('HDEL', KEYS[1], ARGV[4]) == 0 then
  return 0
end
local generation = redis.call('HINCRBY', KEYS[2], ARGV[4], 1)
emit(KEYS[3], ARGV[1], ARGV[2], ARGV[3], {'kind', 'credential_unblocked', 'fingerprint', ARGV[4],
  'epoch', string.format('%d', generation), 'at_ms', ARGV[5]})
return 1

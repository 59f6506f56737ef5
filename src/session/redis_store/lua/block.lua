-- Block a credential; its generation goes up by one.
-- KEYS: 1 partition credentials hash, 2 partition generations hash, 3 partition event stream
-- ARGV: 1 stream maxlen, 2 channel, 3 partition, 4 fingerprint, 5 block JSON, 6 class,
--       7 rule, 8 reason, 9 at ms
local existing = redis.call('HGET', KEYS[1], ARGV[4])
if existing then
  -- Rewritten unchanged, so a WAIT on this connection covers the block found (see close.lua).
  redis.call('HSET', KEYS[1], ARGV[4], existing)
  return 0
end
redis.call('HSET', KEYS[1], ARGV[4], ARGV[5])
local generation = redis.call('HINCRBY', KEYS[2], ARGV[4], 1)
emit(KEYS[3], ARGV[1], ARGV[2], ARGV[3], {'kind', 'credential_blocked', 'fingerprint', ARGV[4],
  'epoch', string.format('%d', generation), 'class', ARGV[6], 'rule', ARGV[7], 'reason', ARGV[8],
  'at_ms', ARGV[9]})
return 1

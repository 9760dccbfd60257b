-- Open a request. KEYS: ledger, events, index.
-- ARGV: ledger JSON, request id, open event, index score, key ttl (ms, 0: none).
local raw = redis.call('GET', KEYS[1])
if raw then
  if cjson.decode(raw)[2] == 'open' then return {'dup'} end
  redis.call('DEL', KEYS[2])
end
redis.call('SET', KEYS[1], ARGV[1])
redis.call('RPUSH', KEYS[2], ARGV[3])
if ARGV[5] ~= '0' then
  redis.call('PEXPIRE', KEYS[1], ARGV[5])
  redis.call('PEXPIRE', KEYS[2], ARGV[5])
end
redis.call('ZADD', KEYS[3], ARGV[4], ARGV[2])
return {'ok'}

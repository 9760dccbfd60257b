-- Open a request. KEYS: ledger, events, index, operation record; with a pool draw, the
-- draw's marker too; the feed last.
-- ARGV (after the operation id and digest): ledger (MessagePack), request id, open event, index
-- score, key ttl (ms, 0: none),
-- marker ttl (ms, 0: none).
-- A draw marked void (given back by reconcile after its open deadline) is never opened.
-- Replacing a closed request that drew from a pool sets its ledger aside under its own
-- draw's marker (its draw may not be settled yet: pool_void.lua reads it there).
-- A repeated operation id is answered with the ledger as it is now (maybe closed since).
local again = replay(KEYS[4], KEYS[1])
if again then return again end
if #KEYS == 6 and redis.call('EXISTS', KEYS[5]) == 1 then return {'void'} end
local raw = redis.call('GET', KEYS[1])
if raw then
  local old = unpacked(raw)
  if old[2] == 'open' then return {'dup'} end
  if old[12] ~= '' then
    local mark = string.sub(KEYS[3], 1, -5) .. 'd:' .. old[12]
    if ARGV[6] == '0' then
      redis.call('SET', mark, raw, 'NX')
    else
      redis.call('SET', mark, raw, 'NX', 'PX', ARGV[6])
    end
  end
  redis.call('DEL', KEYS[2])
end
redis.call('DEL', KEYS[4]) -- the operation ids of a request of this id before
redis.call('SET', KEYS[1], ARGV[1])
redis.call('RPUSH', KEYS[2], ARGV[3])
if ARGV[5] ~= '0' then
  redis.call('PEXPIRE', KEYS[1], ARGV[5])
  redis.call('PEXPIRE', KEYS[2], ARGV[5])
end
redis.call('ZADD', KEYS[3], ARGV[4], ARGV[2])
local ceiling = cjson.decode(ARGV[3])[5]
publish(ARGV[2], 'open', ARGV[3], '0', '0', int(ceiling), '0')
remember(KEYS[4], KEYS[1], '')
return {'ok'}

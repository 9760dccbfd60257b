-- Decide a pool draw whose request's ledger does not hold it (reconcile runs this once the
-- draw's open deadline has passed). KEYS: the request's ledger, the draw's marker (one
-- hash tag: the request's bucket). ARGV: draw key, marker ttl (ms, '0': none).
-- Returns {'opened', ledger} when the request did open with this draw (its ledger, or the
-- closed ledger a later open of the same id set aside under the marker); else marks the
-- draw void, so that its open is refused from now on (open.lua), and returns {'void'}:
-- the draw may then be given back in full, its tokens never used.
local raw = redis.call('GET', KEYS[1])
local st = raw and (string.byte(raw, 1) == 91 and cjson.decode(raw) or cmsgpack.unpack(raw))
if st and st[12] == ARGV[1] then return {'opened', raw} end
local mark = redis.call('GET', KEYS[2])
if mark and mark ~= 'void' then return {'opened', mark} end
if not mark then
  if ARGV[2] == '0' then
    redis.call('SET', KEYS[2], 'void')
  else
    redis.call('SET', KEYS[2], 'void', 'PX', ARGV[2])
  end
end
return {'void'}

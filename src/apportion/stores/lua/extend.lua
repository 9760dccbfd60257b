-- Ledger.extend. KEYS: ledger, events, index, operation record, feed.
-- Records the grown grant (context, output, lease end) under the operation id.
-- ARGV (after the operation id and digest): output tokens, context tokens, now, lease end, grant ok (1/0), grant id, agent.
local again = replay(KEYS[4], KEYS[1])
if again then return again end
local c = load(KEYS[1], KEYS[2], KEYS[3], ARGV[3])
if not c then return {'unknown'} end
local st = c.st
local out, ctx = tok(ARGV[1]), tok(ARGV[2])
if not out or not ctx then return {'bad'} end
if st[2] ~= 'open' then return {'closed', st[2]} end
reap(c)
local p, err = open_grant(c, ARGV[5], ARGV[6], ARGV[7])
if not p then return refuse(c, err) end
local ai = st[p + 1]
local extra = out + ctx
local avail = available(c, ai)
if extra > avail then return refuse(c, {'budget', extra, avail}) end
local cost = priced(st, p, ctx, out)
if st[p + 6] >= 0 then
  local left = cost_left(c)
  if left and cost > left then return refuse(c, {'cost', int(cost), int(left)}) end
end
if cost > 0 then add_cost(st, c.cb + 1, cost) end
st[p + 2] = st[p + 2] + ctx
st[p + 3] = st[p + 3] + out
st[p + 4] = ARGV[4]
st[8] = st[8] - extra
st[7] = st[7] + extra
st[at(c, RBY, ai)] = st[at(c, RBY, ai)] + extra
event(c, 'extend', ARGV[7], st[p], ctx, out, false, 0, '')
local blob = save(c)
remember(KEYS[4], KEYS[1], cjson.encode({st[p + 2], st[p + 3], ARGV[4]}))
return {'ok', blob}

-- Ledger.begin. KEYS: ledger, events, index, operation record, feed.
-- ARGV (after the operation id and digest): agent, agent is a string (1/0), context tokens, output tokens, now, lease end,
-- model ('' for none), input price, output price (nano-USD per token; '' for none),
-- input tokens in hand ('' for the context granted: no input cut).
-- Records the grant (id, context, output, lease end, model) under the operation id.
local again = replay(KEYS[4], KEYS[1])
if again then return again end
local c = load(KEYS[1], KEYS[2], KEYS[3], ARGV[5])
if not c then return {'unknown'} end
local st = c.st
local ai = nil
if ARGV[2] == '1' then ai = agent_index(c, ARGV[1]) end
if not ai then return unknown_agent(c, 0) end
local ctx, out = tok(ARGV[3]), tok(ARGV[4])
if not ctx or not out then return {'bad'} end
local asked = ctx
if ARGV[10] and ARGV[10] ~= '' then
  asked = tok(ARGV[10])
  if not asked then return {'bad'} end
end
local pin, pout = -1, -1
if ARGV[8] ~= '' then
  pin, pout = tok(ARGV[8]), tok(ARGV[9])
  if not pin or not pout or pin > 1e9 or pout > 1e9 then return {'bad'} end
end
if st[2] ~= 'open' then return {'closed', st[2]} end
reap(c)
if pin < 0 and st[c.cb] ~= '' then return refuse(c, {'noprice'}) end
local total = ctx + out
local avail = available(c, ai)
if total > avail then return refuse(c, {'budget', total, avail}) end
local cost = 0
if pin >= 0 then
  cost = ctx * pin + out * pout
  local left = cost_left(c)
  if left and cost > left then return refuse(c, {'cost', int(cost), int(left)}) end
end
local gid = st[10]
st[10] = gid + 1
local p = #st
st[p + 1], st[p + 2], st[p + 3], st[p + 4], st[p + 5] = gid, ai, ctx, out, ARGV[6]
st[p + 6], st[p + 7], st[p + 8] = ARGV[7], pin, pout
if cost > 0 then add_cost(st, c.cb + 1, cost) end
st[at(c, RSV, ai)] = 0
st[8] = st[8] - total
st[7] = st[7] + total
st[at(c, RBY, ai)] = st[at(c, RBY, ai)] + total
st[at(c, CALLS, ai)] = st[at(c, CALLS, ai)] + 1
if ctx < asked then st[at(c, INCUT, ai)] = st[at(c, INCUT, ai)] + 1 end
event(c, 'begin', ARGV[1], gid, ctx, out, false, 0, ARGV[7], asked) -- note: the model
local blob = save(c)
remember(KEYS[4], KEYS[1], cjson.encode({gid, ctx, out, ARGV[6], ARGV[7]}))
return {'ok', blob, gid}

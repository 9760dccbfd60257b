-- Ledger.finish. KEYS: ledger, events, index, operation record, feed.
-- ARGV (after the operation id and digest): input tokens, output tokens, now, truncated (1/0), grant ok (1/0), grant id,
-- agent, then the new plan as triples: agent is a string (1/0), agent, tokens.
local again = replay(KEYS[4], KEYS[1])
if again then return again end
local c = load(KEYS[1], KEYS[2], KEYS[3], ARGV[3])
if not c then return {'unknown'} end
local st = c.st
local inp, out = tok(ARGV[1]), tok(ARGV[2])
if not inp or not out then return {'bad'} end
local plan = {}
for k = 8, #ARGV, 3 do
  local ai = nil
  if ARGV[k] == '1' then ai = agent_index(c, ARGV[k + 1]) end
  if not ai then return unknown_agent(c, (k - 5) / 3) end
  local t = tok(ARGV[k + 2])
  if not t then return {'bad'} end
  plan[#plan + 1] = {ai, t}
end
if st[2] ~= 'open' then return {'closed', st[2]} end
reap(c)
local p, err = open_grant(c, ARGV[5], ARGV[6], ARGV[7])
local late = not p and err[1] == 'settled' and err[2] == 'expire'
if not p and not late then return refuse(c, err) end
local gid, ai, granted
if late then -- its lease ran out: the whole usage is over-use (Ledger.finish)
  gid, ai, granted = tonumber(ARGV[6]), agent_index(c, ARGV[7]), 0
else
  gid, ai = st[p], st[p + 1]
  granted = st[p + 2] + st[p + 3]
  if st[p + 6] >= 0 then
    add_cost(st, c.cb + 1, -priced(st, p, st[p + 2], st[p + 3]))
    local cost = priced(st, p, inp, out)
    add_cost(st, c.cb + 2, cost)
    add_cost(st, c.cb + 2 + ai, cost)
  end
  drop_grant(c, p)
end
local used = inp + out
st[7] = st[7] - granted
st[at(c, RBY, ai)] = st[at(c, RBY, ai)] - granted
local overuse = 0
if used > granted then overuse = used - granted end
local room = st[8] + granted
local charge = used
if overuse > 0 then
  st[at(c, OBY, ai)] = int(tonumber(st[at(c, OBY, ai)]) + overuse)
  if used > room then
    charge = room
    st[9] = int(tonumber(st[9]) + used - room)
  end
end
st[8] = room - charge
st[6] = st[6] + charge
st[at(c, CBY, ai)] = st[at(c, CBY, ai)] + charge
local truncated = ARGV[4] == '1'
if truncated then st[at(c, TRUNC, ai)] = st[at(c, TRUNC, ai)] + 1 end
for _, q in ipairs(plan) do st[at(c, ALLOC, q[1])] = q[2] end
local note = ''
if late then note = 'late' end
event(c, 'finish', ARGV[7], gid, inp, out, truncated, overuse, note)
local blob = save(c)
remember(KEYS[4], KEYS[1], '')
return {'ok', blob}

-- Store.open_children (Ledger.split, Ledger.draw, then one open per child), one step.
-- KEYS: the parent's ledger, events, index, operation record; then each child's ledger,
-- events and operation record (all of one tree share the root's hash tag); the feed last.
-- The operation id is recorded in the parent's record; a repeated one is answered with
-- the parent's and the children's ledgers as they are now.
-- ARGV (after the operation id and digest): now, max depth, ceiling ('' for none), share ('' for none), the children's ledger
-- (MessagePack; ceiling 0: set here), key ttl (ms, 0: none; raised to the parent's keys' own,
-- none when they have none), expiry score, the note of each child's open event (its
-- features), then each child's id and priority rank.
local m = (#ARGV - 8) / 2
local done, first = recorded(KEYS[4])
if done == false then return {'conflict', first} end
if done ~= nil then
  local reply = {'ok', redis.call('GET', KEYS[1])}
  for i = 1, m do reply[#reply + 1] = redis.call('GET', KEYS[2 + 3 * i]) end
  for i = 2, m + 2 do
    if not reply[i] then return {'unknown'} end
  end
  return reply
end
local c = load(KEYS[1], KEYS[2], KEYS[3], ARGV[1])
if not c then return {'unknown'} end
local st = c.st
local ids, ranks, low = {}, {}, math.huge
for i = 1, m do
  ids[i] = ARGV[7 + 2 * i]
  ranks[i] = tonumber(ARGV[8 + 2 * i])
  if ranks[i] < low then low = ranks[i] end
end
for i = 1, m do
  local raw = redis.call('GET', KEYS[2 + 3 * i])
  if raw and unpacked(raw)[2] == 'open' then return {'dup', ids[i]} end
end
if st[2] ~= 'open' then return {'closed', st[2]} end
reap(c)
local depth = st[c.t + 1] + 1
if depth > tonumber(ARGV[2]) then return refuse(c, {'deep', depth}) end
-- what a child of the lowest rank may draw: the free pool less what is held for agents
-- of a strictly higher rank
local held = 0
for b = 1, c.n do
  local t = st[at(c, RSV, b)]
  if t > 0 and st[at(c, RANK, b)] > low then held = held + t end
end
local spare = st[8] - held
if spare < 0 then spare = 0 end
local tokens = {}
if ARGV[4] == '' then
  local cap = tonumber(ARGV[3])
  if cap * m > spare then return refuse(c, {'child', cap * m, spare, ''}) end
  for i = 1, m do tokens[i] = cap end
else
  local total = math.floor(spare * tonumber(ARGV[4]))
  local whole = 0
  for i = 1, m do whole = whole + 2 ^ ranks[i] end
  for i = 1, m do
    local t = math.floor(total * 2 ^ ranks[i] / whole)
    if ARGV[3] ~= '' and t > tonumber(ARGV[3]) then t = tonumber(ARGV[3]) end
    tokens[i] = t
  end
  for i = 1, m do
    if tokens[i] == 0 then return refuse(c, {'child', m, spare, 'nothing left to spare'}) end
  end
end
local costs = {}
if st[c.cb] ~= '' then
  local whole_cost = cost_left(c)
  local left = whole_cost
  for i = 1, m do
    local x = math.floor(whole_cost * (tokens[i] / spare))
    if x > left then x = left end
    left = left - x
    costs[i] = x
  end
end
-- a child's keys live at least as long as its parent's (none while the parent has none),
-- so they are never gone while the parent still holds the child's draw
local key_ttl = ARGV[6]
local parent_ttl = redis.call('PTTL', KEYS[1])
if parent_ttl == -1 then
  key_ttl = '0'
elseif key_ttl ~= '0' and parent_ttl > tonumber(key_ttl) then
  key_ttl = int(parent_ttl)
end
local blobs = {}
for i = 1, m do
  local k = cmsgpack.unpack(ARGV[5])
  local n = k[13]
  k[1], k[5], k[8] = ids[i], tokens[i], tokens[i]
  local held_k = 0
  for a = 1, n do held_k = held_k + k[13 + 3 * n + a] end
  if held_k > tokens[i] then
    for a = 1, n do k[13 + 3 * n + a] = 0 end -- a reserve that does not fit is dropped
  end
  if costs[i] then k[14 + 10 * n] = int(costs[i]) end
  local t = 17 + 11 * n
  k[t], k[t + 1], k[t + 2] = st[1], depth, ranks[i]
  local blob = cmsgpack.pack(k)
  local key, ekey = KEYS[2 + 3 * i], KEYS[3 + 3 * i]
  redis.call('DEL', ekey, KEYS[4 + 3 * i]) -- a closed request of the id: its events and ids
  redis.call('SET', key, blob)
  local opened = cjson.encode({'open', ARGV[1], false, 0, tokens[i], 0, false, 0, ARGV[8]})
  redis.call('RPUSH', ekey, opened)
  publish(ids[i], 'open', opened, '0', '0', int(tokens[i]), '0')
  if key_ttl ~= '0' then
    redis.call('PEXPIRE', key, key_ttl)
    redis.call('PEXPIRE', ekey, key_ttl)
  end
  redis.call('ZADD', KEYS[3], ARGV[7], ids[i])
  table.insert(st, c.g, ids[i])
  table.insert(st, c.g + 1, tokens[i])
  table.insert(st, c.g + 2, int(costs[i] or 0))
  st[c.t + 5] = st[c.t + 5] + 1
  c.g = c.g + 3
  st[8] = st[8] - tokens[i]
  st[7] = st[7] + tokens[i]
  if costs[i] and costs[i] > 0 then add_cost(st, c.cb + 1, costs[i]) end
  event(c, 'child', false, 0, 0, tokens[i], false, 0, ids[i])
  blobs[i] = blob
end
c.dirty = true
local reply = {'ok', save(c)}
remember(KEYS[4], KEYS[1], '')
for i = 1, m do reply[#reply + 1] = blobs[i] end
return reply

-- The helpers of the scripts that close request trees (close, reap), appended to
-- common.lua for them alone: the scripts on the hot path (begin, extend, finish,
-- release) do not build these functions on every call.

-- Position of the draw of child id in the tree section, or nil.
local function child_at(c, id)
  local st = c.st
  for p = c.t + 6, c.g - 1, 3 do
    if st[p] == id then return p end
  end
  return nil
end

-- Remove the draw at p (the grants after it move down).
local function drop_child(c, p)
  for _ = 1, 3 do table.remove(c.st, p) end
  c.st[c.t + 5] = c.st[c.t + 5] - 1
  c.g = c.g - 3
end

-- Close the request: release its open grants (oldest first, in one pass), charge the draws
-- of children never settled (their ledgers are gone: what they used is not known, so the
-- whole draw counts as used, never handed out again), then record the status.
local function close(c, status)
  local st = c.st
  for p = c.g, #st, GS do unreserve(c, p, 'close', status) end
  truncate(st, c.g)
  while st[c.t + 5] > 0 do
    local p = c.t + 6
    local tokens, cost = st[p + 1], tonumber(st[p + 2])
    st[7] = st[7] - tokens
    st[6] = st[6] + tokens
    st[c.t + 3] = st[c.t + 3] + tokens
    if cost > 0 then
      add_cost(st, c.cb + 1, -cost)
      add_cost(st, c.cb + 2, cost)
      st[c.t + 4] = int(tonumber(st[c.t + 4]) + cost)
    end
    event(c, 'child_close', false, 0, tokens, tokens, false, 0, st[p])
    drop_child(c, p)
  end
  st[2] = status
  event(c, 'close', false, 0, 0, 0, false, 0, status)
  c.dirty = true
end

-- Fold the closed child kc back into its parent p (Ledger.settle_child): its usage and
-- overflow are consumed by p, the rest of its draw returns to p's free pool.
local function settle_into(p, kc)
  local at_p = child_at(p, kc.st[1])
  if not at_p then return end
  local st = p.st
  local tokens, cost = st[at_p + 1], tonumber(st[at_p + 2])
  drop_child(p, at_p)
  local used = kc.st[6] + tonumber(kc.st[9])
  local spent = tonumber(kc.st[kc.cb + 2])
  st[7] = st[7] - tokens
  if cost > 0 then add_cost(st, p.cb + 1, -cost) end
  if spent > 0 then
    add_cost(st, p.cb + 2, spent)
    st[p.t + 4] = int(tonumber(st[p.t + 4]) + spent)
  end
  local room = st[8] + tokens
  local charge = used
  if charge > room then charge = room end
  if used > charge then st[9] = int(tonumber(st[9]) + used - charge) end
  st[8] = room - charge
  st[6] = st[6] + charge
  st[p.t + 3] = st[p.t + 3] + charge
  local overuse = 0
  if used > tokens then overuse = used - tokens end
  event(p, 'child_close', false, 0, used, tokens, false, overuse, kc.st[1])
  p.dirty = true
end

-- DECLARED (common.lua) holds the ledger, event and operation record keys of the other
-- requests of a tree a script may touch, by id, as the caller declared them in KEYS (Redis
-- Cluster requires every key a script touches there): a script never builds a key name
-- itself.

-- Declare the requests named from ARGV[first_arg] on, their ledger, event and operation
-- record keys taken in threes from KEYS[first_key] on.
local function declare(first_key, first_arg)
  local i = 0
  while ARGV[first_arg + i] do
    local k = first_key + 3 * i
    DECLARED[ARGV[first_arg + i]] = {KEYS[k], KEYS[k + 1], KEYS[k + 2]}
    i = i + 1
  end
end

-- The ledger, event and operation record keys of request id, or nil when the caller did
-- not declare them.
local function keys_of(id)
  local k = DECLARED[id]
  if k then return k[1], k[2], k[3] end
  return nil, nil, nil
end

-- Append to missing the requests closing c would touch that are not declared: its parent
-- (with_parent: when it is folded back into it), its open children and theirs, depth
-- first. Reads declared keys only; writes nothing.
local function undeclared(c, missing, with_parent)
  local st = c.st
  local parent = st[c.t]
  if with_parent and parent ~= '' and not DECLARED[parent] then
    missing[#missing + 1] = parent
  end
  for p = c.t + 6, c.g - 1, 3 do
    local key, ekey = keys_of(st[p])
    if not key then
      missing[#missing + 1] = st[p]
    else
      local kc = load(key, ekey, c.ikey, c.now_s)
      if kc and kc.st[2] == 'open' and kc.st[kc.t] == st[1] then
        undeclared(kc, missing, false)
      end
    end
  end
  return missing
end

-- Closed requests stay readable for the retention period (milliseconds; 0: forever).
local function retain(c, ms)
  for _, key in ipairs({c.key, c.ekey, c.okey}) do
    if ms == '0' then redis.call('PERSIST', key) else redis.call('PEXPIRE', key, ms) end
  end
end

-- Close c after its open children, depth first, each settled into its parent and saved
-- (c itself is left for the caller to save). Appends the ids of the children it closed.
local function close_tree(c, status, ms, closed)
  local st = c.st
  local ids = {}
  for p = c.t + 6, c.g - 1, 3 do ids[#ids + 1] = st[p] end
  for _, id in ipairs(ids) do
    local key, ekey, okey = keys_of(id)
    local kc = key and load(key, ekey, c.ikey, c.now_s, okey)
    if kc and kc.st[2] == 'open' and kc.st[kc.t] == st[1] then
      reap(kc)
      close_tree(kc, status, ms, closed)
      settle_into(c, kc)
      save(kc)
      retain(kc, ms)
      closed[#closed + 1] = id
    end
  end
  close(c, status)
end

-- Settle a closed child c into its parent, when the parent is open (it saves the parent).
local function settle_parent(c)
  local parent = c.st[c.t]
  if parent == '' then return end
  local key, ekey = keys_of(parent)
  local p = key and load(key, ekey, c.ikey, c.now_s)
  if p and p.st[2] == 'open' then
    settle_into(p, c)
    save(p)
  end
end

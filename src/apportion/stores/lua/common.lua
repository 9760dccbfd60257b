-- Shared by every request script of apportion's Redis store (prepended to each).
--
-- KEYS[1] holds one request's ledger, KEYS[2] its event list, KEYS[3] the index of open
-- requests of its bucket, scored at or before the request's next deadline (its earliest
-- lease end or its expiry), KEYS[4] its operation record (see below). All four share one
-- hash tag. A script reaching other requests of the tree (close, reap) gets their keys
-- declared in KEYS too (see DECLARED).
--
-- Operation ids. Every request script takes two values first in ARGV, taken off here (the
-- script reads its own arguments from ARGV[1] on): the operation id ('' for none) and the
-- digest of the arguments a retry must repeat ('OPERATION:HASH', made by the caller). An
-- operation that carried an id and was carried out records it in the request's operation
-- record, a hash (id -> 'digest|payload', the payload a JSON array of what the reply adds
-- to the state, or ''), in the same step as the change; the record lives as long as the
-- request's ledger key (the same TTL: copied when the record is made, set by retain at
-- close), and a new open of the id, replacing a closed request, deletes it. A repeated
-- id changes nothing and is answered with the first outcome (the state as it is now, and
-- the payload); the same id with another digest is answered {'conflict', first digest}. A
-- refused operation records nothing.
--
-- The ledger is one flat array (decoding makes one Lua table, not twenty), stored as
-- MessagePack (cmsgpack packs and unpacks it in a fraction of cjson's time; a JSON array,
-- as versions before stored it, still reads):
--   1 id, 2 status, 3 outcome ('' or text), 4 expires (text), 5 ceiling, 6 consumed,
--   7 reserved, 8 free, 9 overflow (text), 10 next grant id, 11 pool, 12 draw key,
--   13 n (agents), then ten blocks of n values in agent order: names, ranks,
--   allocation, reserve, consumed, reserved, over-use (text), calls, truncated calls,
--   input-cut calls;
--   then the cost section (nano-USD, decimal text): cost ceiling ('' for none), cost
--   reserved, cost consumed, then cost per agent (n values);
--   then the tree section (at c.t): parent id ('' for a root request), depth, priority
--   rank (-1 for a root), tokens the closed children consumed, their cost (text), k (open
--   children), then k draws of three values: child id, tokens, nano-USD (text);
--   then the open grants, eight values each, by grant id: id, agent (1..n), context,
--   output, lease end (text), model ('' for none), input price, output price (nano-USD
--   per token; -1 when the grant carries no prices).
-- The store's event feed is a stream, declared as the last key by every request script
-- (KEYS[#KEYS]): each event a script records is added to it (XADD, trimmed to about
-- FEED_MAXLEN entries) in the same step, with the request's id and status, the agent's
-- tokens held and consumed after the change (the request's, for an event of no agent)
-- and the request's free pool and consumed tokens.
-- Token counts stay below 2^53, so Lua's doubles hold them exactly; the counters that can
-- grow without bound (overflow, over-use) are decimal text. Clock times travel as the
-- caller's exact decimal text and are only compared, never printed.

local NAME, RANK, ALLOC, RSV, CBY, RBY, OBY, CALLS, TRUNC, INCUT = 0, 1, 2, 3, 4, 5, 6, 7, 8, 9
local GS = 8 -- values per open grant
local EV_SLICE = 1000 -- events appended per RPUSH
local FEED_MAXLEN = '100000'

-- The call's own values, set by start(): its operation id and digest, its feed and the
-- id its feed entries take, and the other requests of a tree it declared (tree.lua).
local OP, DIGEST, FEED, FEED_ID, DECLARED

-- Begin a call (every request script does, first): take the operation id and digest off
-- ARGV and name the feed. On a cluster the feed is one stream per bucket (PREFIX:{bN}:feed,
-- in the request's slot) and an entry's id is the server's clock in microseconds (then a
-- sequence): readers merge the buckets' streams in that order. A standalone server's one
-- stream takes Redis's ids. (Run as a Redis Function, the library is loaded once and each
-- call starts here; as a script, the whole source runs on every call.)
local function start()
  OP, DIGEST = ARGV[1], ARGV[2]
  table.remove(ARGV, 1)
  table.remove(ARGV, 1)
  FEED = KEYS[#KEYS]
  FEED_ID = '*'
  if string.sub(FEED, -6) == '}:feed' then
    local t = redis.call('TIME')
    FEED_ID = t[1] .. string.format('%06d', tonumber(t[2])) .. '-*'
  end
  DECLARED = {}
end

-- Add one event (its JSON text) of request rid to the feed.
local function publish(rid, status, ev, granted, used, free, consumed)
  local added = redis.pcall('XADD', FEED, 'MAXLEN', '~', FEED_MAXLEN, FEED_ID,
    'r', rid, 's', status, 'e', ev, 'g', granted, 'u', used, 'f', free, 'c', consumed)
  if type(added) == 'table' and added.err then -- the stream's top id is ahead of the clock
    redis.call('XADD', FEED, 'MAXLEN', '~', FEED_MAXLEN, '*',
      'r', rid, 's', status, 'e', ev, 'g', granted, 'u', used, 'f', free, 'c', consumed)
  end
end

local function int(n)
  return string.format('%.0f', n)
end

-- The payload recorded for OP in the operation record okey: nil when OP is new (or none);
-- false and the first digest when the id was first used with other arguments.
local function recorded(okey)
  if OP == '' then return nil end
  local rec = redis.call('HGET', okey, OP)
  if not rec then return nil end
  local bar = string.find(rec, '|', 1, true)
  local first = string.sub(rec, 1, bar - 1)
  if first ~= DIGEST then return false, first end
  return string.sub(rec, bar + 1)
end

-- The reply to a repeated OP (nil when it is new): {'ok', the ledger as it is now, the
-- payload's values...}, or the conflict.
local function replay(okey, key)
  local done, first = recorded(okey)
  if done == nil then return nil end
  if done == false then return {'conflict', first} end
  local raw = redis.call('GET', key)
  if not raw then return {'unknown'} end
  local reply = {'ok', raw}
  if done ~= '' then
    for _, v in ipairs(cjson.decode(done)) do reply[#reply + 1] = v end
  end
  return reply
end

-- Record OP (when given) with its payload in the operation record okey, which lives as
-- long as the ledger key: the record's first id also adds its marker field '' (never an
-- id), and only then is the ledger key's TTL read and copied (no write changes that TTL
-- until close, whose retain sets both).
local function remember(okey, key, payload)
  if OP == '' then return end
  if redis.call('HSET', okey, OP, DIGEST .. '|' .. payload, '', '') == 2 then
    local ttl = redis.call('PTTL', key)
    if ttl > 0 then redis.call('PEXPIRE', okey, ttl) else redis.call('PERSIST', okey) end
  end
end

local function score(x)
  if x == math.huge then return '+inf' end
  return string.format('%.17g', x)
end

local function tok(s)
  local n = tonumber(s)
  if not n or n < 0 or n > 1e12 or n ~= math.floor(n) then return nil end
  return n
end

-- Position of agent ai's value in block b.
local function at(c, b, ai)
  return 13 + b * c.n + ai
end

local function deadline(c)
  local st = c.st
  local d = tonumber(st[4])
  for p = c.g, #st, GS do
    local lease = tonumber(st[p + 4])
    if lease < d then d = lease end
  end
  return d
end

-- The values of a stored ledger (MessagePack, or the JSON array of earlier versions).
local function unpacked(raw)
  if string.byte(raw, 1) == 91 then return cjson.decode(raw) end -- '['
  return cmsgpack.unpack(raw)
end

-- Load the ledger of one request into a context, or nil when the store does not hold it.
local function load(key, ekey, ikey, now_s, okey)
  local raw = redis.call('GET', key)
  if not raw then return nil end
  local st = unpacked(raw)
  local n = st[13]
  local t = 17 + 11 * n
  local c = {
    st = st, n = n, cb = 14 + 10 * n, t = t, g = t + 6 + 3 * st[t + 5], ev = {}, eva = {},
    gone = {},
    dirty = false, key = key, ekey = ekey, ikey = ikey, now_s = now_s, now = tonumber(now_s),
    okey = okey,
  }
  c.due = deadline(c)
  return c
end

local function agent_index(c, name)
  local st = c.st
  for i = 1, c.n do
    if st[13 + i] == name then return i end
  end
  return nil
end

-- The reply refusing an unknown agent (the k-th of the new plan; 0: the one named).
local function unknown_agent(c, k)
  local reply = {'agent', k}
  for i = 1, c.n do reply[#reply + 1] = c.st[13 + i] end
  return reply
end

local function event(c, kind, agent, gid, ctx, out, truncated, overuse, note, asked)
  c.ev[#c.ev + 1] = cjson.encode(
    {kind, c.now_s, agent, gid, ctx, out, truncated, overuse, note, asked or 0})
  c.eva[#c.ev] = agent
end

-- Position of open grant gid, or nil.
local function grant_at(c, gid)
  local st = c.st
  for p = c.g, #st, GS do
    if st[p] == gid then return p end
  end
  return nil
end

-- Remove the open grant at p: the grants after it move down once (one pass).
local function drop_grant(c, p)
  local st = c.st
  local last = #st
  for i = p, last - GS do st[i] = st[i + GS] end
  for i = last, last - GS + 1, -1 do st[i] = nil end
end

-- Remove every value from position p to the end (from the end, so # stays right).
local function truncate(st, p)
  for i = #st, p, -1 do st[i] = nil end
end

-- Cost (nano-USD) of ctx input and out output tokens at the prices of the grant at p.
local function priced(st, p, ctx, out)
  if st[p + 6] < 0 then return 0 end
  return ctx * st[p + 6] + out * st[p + 7]
end

-- Add d nano-USD to the text counter at position q.
local function add_cost(st, q, d)
  st[q] = int(tonumber(st[q]) + d)
end

-- nano-USD a new grant may still cost at full size, or nil without a cost ceiling.
local function cost_left(c)
  local st = c.st
  if st[c.cb] == '' then return nil end
  local left = tonumber(st[c.cb]) - tonumber(st[c.cb + 2]) - tonumber(st[c.cb + 1])
  if left < 0 then left = 0 end
  return left
end

-- Account the open grant at position p as settled without usage (its tokens return to
-- the free pool), leaving it in place: the caller removes it.
local function unreserve(c, p, how, note)
  local st = c.st
  local gid, ai, ctx, out = st[p], st[p + 1], st[p + 2], st[p + 3]
  local total = ctx + out
  local cost = priced(st, p, ctx, out)
  if cost > 0 then add_cost(st, c.cb + 1, -cost) end
  st[7] = st[7] - total
  st[8] = st[8] + total
  st[at(c, RBY, ai)] = st[at(c, RBY, ai)] - total
  c.gone[gid] = how .. '|' .. st[13 + ai]
  local kind = 'release'
  if how == 'expire' then kind = 'expire' end
  event(c, kind, st[13 + ai], gid, ctx, out, false, 0, note)
  c.dirty = true
end

-- Settle the open grant at position p without usage: its tokens return to the free pool.
local function settle(c, p, how, note)
  unreserve(c, p, how, note)
  drop_grant(c, p)
end

-- Release every grant whose lease ended at or before now, oldest grant first: one pass
-- that settles the ended grants and moves each remaining one down at most once.
local function reap(c)
  if c.due > c.now then return 0 end
  local st, n, w = c.st, 0, c.g
  local last = #st
  for p = c.g, last, GS do
    if tonumber(st[p + 4]) <= c.now then
      unreserve(c, p, 'expire', 'lease expired')
      n = n + 1
    else
      if w ~= p then
        for k = 0, GS - 1 do st[w + k] = st[p + k] end
      end
      w = w + GS
    end
  end
  truncate(st, w)
  return n
end

-- Tokens agent ai could be granted: the free pool less the reservations of other
-- unstarted agents of equal or higher priority.
local function available(c, ai)
  local st = c.st
  local rank, held = st[at(c, RANK, ai)], 0
  for b = 1, c.n do
    local t = st[at(c, RSV, b)]
    if t > 0 and b ~= ai and st[at(c, RANK, b)] >= rank then held = held + t end
  end
  local a = st[8] - held
  if a < 0 then a = 0 end
  return a
end

-- How grant gid of agent was settled: by this call, else from the event list (a refused
-- operation only: this scans the events). Nil when it never was.
local function settled_by(c, gid, agent)
  local mine = c.gone[gid]
  if mine then
    local bar = string.find(mine, '|', 1, true)
    if string.sub(mine, bar + 1) == agent then return string.sub(mine, 1, bar - 1) end
    return nil
  end
  local events = redis.call('LRANGE', c.ekey, 0, -1)
  for i = #events, 1, -1 do
    local e = cjson.decode(events[i])
    if e[4] == gid and (e[1] == 'finish' or e[1] == 'release' or e[1] == 'expire') then
      if e[3] == agent then return e[1] end
      return nil
    end
  end
  return nil
end

-- The position of the open grant a caller names, or nil and the error reply.
local function open_grant(c, ok, gid_s, agent)
  if ok ~= '1' then return nil, {'foreign'} end
  local gid = tonumber(gid_s)
  local p = grant_at(c, gid)
  if p and c.st[13 + c.st[p + 1]] == agent then return p end
  local how = settled_by(c, gid, agent)
  if how then return nil, {'settled', how} end
  return nil, {'foreign'}
end

local function save(c)
  local st = c.st
  local blob = cmsgpack.pack(st)
  redis.call('SET', c.key, blob, 'KEEPTTL')
  -- in slices: unpack() of more than about 8,000 values fails (Lua's C stack)
  local ev = c.ev
  for i = 1, #ev, EV_SLICE do
    redis.call('RPUSH', c.ekey, unpack(ev, i, math.min(i + EV_SLICE - 1, #ev)))
  end
  local free, consumed = int(st[8]), int(st[6])
  for i = 1, #ev do
    local granted, used = st[7], st[6]
    local ai = c.eva[i] and agent_index(c, c.eva[i])
    if ai then granted, used = st[at(c, RBY, ai)], st[at(c, CBY, ai)] end
    publish(st[1], st[2], ev[i], int(granted), int(used), free, consumed)
  end
  if st[2] == 'open' then
    -- the index may score a request early (reap corrects it), never late
    local due = deadline(c)
    if due < c.due then redis.call('ZADD', c.ikey, score(due), st[1]) end
  else
    redis.call('ZREM', c.ikey, st[1])
  end
  return blob
end

-- A refused operation: keep what reaping changed, change nothing else.
local function refuse(c, reply)
  if c.dirty then save(c) end
  return reply
end


-- Draw a request's ceiling from a pool's current window. KEYS: pool, draws.
-- ARGV: draw key, tokens, the request's priority rank, now, open deadline (text).
-- The pool's window never goes back: a draw whose now falls in an earlier window than the
-- newest one drawn from is charged to that newest window (see apportion.pools).
-- The draw is recorded as 'window charged|tokens|open deadline': once the deadline (plus
-- the clock skew bound) has passed, reconcile gives back a draw whose request never opened.
-- A draw key met again (it comes from the open's operation id: a retried open) is drawn
-- once: {'again', window}, or {'conflict'} for another number of tokens.
local entry = redis.call('HGET', KEYS[2], ARGV[1])
if entry then
  local window, tokens = string.match(entry, '^([^|]*)|([^|]*)')
  if tokens ~= ARGV[2] then return {'conflict'} end
  return {'again', window}
end
local ranks = {critical = 2, standard = 1, peripheral = 0}
local cfg = redis.call('HMGET', KEYS[1], 'capacity', 'window_seconds', 'reserve', 'window', 'drawn')
if not cfg[1] then return {'unknown'} end
local ws, now = tonumber(cfg[2]), tonumber(ARGV[4])
local w = 0
if ws ~= math.huge then w = math.floor(now / ws) end
local drawn, returned = 0, '0' -- a new window: nothing drawn nor given back yet
local newest = tonumber(cfg[4])
if newest and newest >= w then w, drawn, returned = newest, tonumber(cfg[5]), false end
local rank, held = tonumber(ARGV[3]), 0
for class, t in pairs(cjson.decode(cfg[3])) do
  if ranks[class] > rank then held = held + t end
end
local avail = tonumber(cfg[1]) - drawn - held
if avail < 0 then avail = 0 end
local tokens = tonumber(ARGV[2])
if tokens > avail then return {'exhausted', avail} end
local wk = string.format('%.0f', w)
redis.call('HSET', KEYS[1], 'window', wk, 'drawn', string.format('%.0f', drawn + tokens))
if returned then redis.call('HSET', KEYS[1], 'returned', returned) end
redis.call('HSET', KEYS[2], ARGV[1], wk .. '|' .. ARGV[2] .. '|' .. ARGV[5])
return {'ok', wk}

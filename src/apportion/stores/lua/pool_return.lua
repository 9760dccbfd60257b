-- Settle a pool draw once: unspent tokens return to the window the draw was charged to,
-- if that is still the pool's current window (the newest drawn from, and not behind now),
-- and are counted as the window's 'returned'.
-- KEYS: pool, draws. ARGV: draw key, unspent tokens, overflow tokens, now.
-- Returns the tokens returned (0 when the draw was settled already or its window ended).
local entry = redis.call('HGET', KEYS[2], ARGV[1])
if not entry then return 0 end
redis.call('HDEL', KEYS[2], ARGV[1])
if ARGV[3] ~= '0' then redis.call('HINCRBY', KEYS[1], 'overflow', ARGV[3]) end
local cfg = redis.call('HMGET', KEYS[1], 'window_seconds', 'window', 'drawn')
if not cfg[1] or not cfg[2] then return 0 end
local ws, now, newest = tonumber(cfg[1]), tonumber(ARGV[4]), tonumber(cfg[2])
local w = 0
if ws ~= math.huge then w = math.floor(now / ws) end
local bar = string.find(entry, '|', 1, true)
if w > newest or tonumber(string.sub(entry, 1, bar - 1)) ~= newest then return 0 end
local rest = string.sub(entry, bar + 1)
local bar2 = string.find(rest, '|', 1, true)
if bar2 then rest = string.sub(rest, 1, bar2 - 1) end
local back = math.min(tonumber(ARGV[2]), tonumber(rest))
redis.call('HSET', KEYS[1], 'drawn', string.format('%.0f', tonumber(cfg[3]) - back))
redis.call('HINCRBY', KEYS[1], 'returned', string.format('%.0f', back))
return back

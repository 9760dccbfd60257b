-- Settle a pool draw once: unspent tokens return if its window is still the current one.
-- KEYS: pool, draws. ARGV: draw key, unspent tokens, overflow tokens, now.
-- Returns the tokens returned (0 when the draw was settled already or its window ended).
local entry = redis.call('HGET', KEYS[2], ARGV[1])
if not entry then return 0 end
redis.call('HDEL', KEYS[2], ARGV[1])
if ARGV[3] ~= '0' then redis.call('HINCRBY', KEYS[1], 'overflow', ARGV[3]) end
local cfg = redis.call('HMGET', KEYS[1], 'window_seconds', 'window', 'drawn')
if not cfg[1] then return 0 end
local ws, now = tonumber(cfg[1]), tonumber(ARGV[4])
local w = 0
if ws ~= math.huge then w = math.floor(now / ws) end
local bar = string.find(entry, '|', 1, true)
if not cfg[2] or tonumber(cfg[2]) ~= w or tonumber(string.sub(entry, 1, bar - 1)) ~= w then
  return 0
end
local back = math.min(tonumber(ARGV[2]), tonumber(string.sub(entry, bar + 1)))
redis.call('HSET', KEYS[1], 'drawn', string.format('%.0f', tonumber(cfg[3]) - back))
return back

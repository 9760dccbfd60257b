-- Ledger.release. KEYS: ledger, events, index, operation record, feed.
-- ARGV (after the operation id and digest): now, reason, grant ok (1/0), grant id, agent, refused by the caller (1/0).
local again = replay(KEYS[4], KEYS[1])
if again then return again end
local c = load(KEYS[1], KEYS[2], KEYS[3], ARGV[1])
if not c then return {'unknown'} end
if ARGV[6] == '1' then return {'bad'} end
if c.st[2] ~= 'open' then return {'closed', c.st[2]} end
reap(c)
local p, err = open_grant(c, ARGV[3], ARGV[4], ARGV[5])
if not p then return refuse(c, err) end
settle(c, p, 'release', ARGV[2])
local blob = save(c)
remember(KEYS[4], KEYS[1], '')
return {'ok', blob}

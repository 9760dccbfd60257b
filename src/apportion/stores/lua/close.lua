-- Ledger.close. KEYS: ledger, events, index.
-- ARGV: now, status, outcome ('' for none), refused by the caller (1/0), retention (ms).
-- Open children close first, depth first, each folded back into its parent; a child
-- request is then folded back into its own parent (same hash tag: the same slot).
local c = load(KEYS[1], KEYS[2], KEYS[3], ARGV[1])
if not c then return {'unknown'} end
local st = c.st
if st[2] ~= 'open' then return {'closed', st[2]} end
if ARGV[4] == '1' then return {'bad'} end
reap(c)
close_tree(c, ARGV[2], ARGV[5], {})
if ARGV[3] ~= '' then st[3] = ARGV[3] end
local blob = save(c)
retain(c, ARGV[5])
settle_parent(c)
return {'ok', blob}

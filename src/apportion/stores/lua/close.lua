-- Ledger.close. KEYS: ledger, events, index, operation record; then the ledger, events
-- and operation record of each other request of the tree the caller declares (its parent,
-- its open children and theirs); the feed last.
-- ARGV (after the operation id and digest): now, status, outcome ('' for none), refused by the caller (1/0), retention (ms),
-- then the declared requests' ids (in the order of their keys).
-- Open children close first, depth first, each folded back into its parent; a child
-- request is then folded back into its own parent (same hash tag: the same slot). When the
-- tree holds a request the caller did not declare (it changed since the caller read it),
-- nothing is written: the reply is {'tree', the undeclared ids...}, for the caller to
-- declare them and call again.
local again = replay(KEYS[4], KEYS[1])
if again then return again end
local c = load(KEYS[1], KEYS[2], KEYS[3], ARGV[1], KEYS[4])
if not c then return {'unknown'} end
local st = c.st
if st[2] ~= 'open' then return {'closed', st[2]} end
if ARGV[4] == '1' then return {'bad'} end
declare(5, 6)
local missing = undeclared(c, {}, true)
if #missing > 0 then return {'tree', unpack(missing)} end
reap(c)
close_tree(c, ARGV[2], ARGV[5], {})
if ARGV[3] ~= '' then st[3] = ARGV[3] end
local blob = save(c)
retain(c, ARGV[5])
settle_parent(c)
remember(KEYS[4], KEYS[1], '')
return {'ok', blob}

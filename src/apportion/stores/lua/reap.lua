-- Store.reap over buckets. KEYS: the buckets' indexes (PREFIX:{bN}:open), one or many:
-- many on a standalone server (one round trip), one per call on a cluster; then the ledger,
-- events and operation record of each request the caller declares (the due requests it read from the
-- indexes, and the other requests of their trees: parents, open children and theirs);
-- the feed last.
-- ARGV (after an operation id and digest, unused): now, retention (ms), most requests to look at per bucket, number of buckets, then
-- the declared requests' ids (in the order of their keys).
-- A due request the caller did not declare, or whose tree holds one it did not (the tree
-- changed since it was read), is left as it is and its id returned as wanted.
-- Returns: grants and requests settled; how many buckets had more due than the limit,
-- and their positions in KEYS; how many requests it closed, and their ids; how many
-- requests are wanted, and their ids; then the final ledger of each pooled request it
-- closed. An expired request closes its open children first (they count as closed
-- requests too).
local settled, full, closed, owed, wanted = 0, {}, {}, {}, {}
local limit = tonumber(ARGV[3])
local buckets = tonumber(ARGV[4])
declare(buckets + 1, 5)
for k = 1, buckets do
  local ikey = KEYS[k]
  local due = redis.call('ZRANGEBYSCORE', ikey, '-inf', ARGV[1], 'LIMIT', 0, limit)
  if #due >= limit then full[#full + 1] = k end
  for _, rid in ipairs(due) do
    local key, ekey, okey = keys_of(rid)
    local c = key and load(key, ekey, ikey, ARGV[1], okey)
    if not key then
      wanted[#wanted + 1] = rid
    elseif not c or c.st[2] ~= 'open' then
      redis.call('ZREM', ikey, rid)
    elseif tonumber(c.st[4]) <= c.now then
      local missing = undeclared(c, {}, true)
      if #missing > 0 then
        for _, id in ipairs(missing) do wanted[#wanted + 1] = id end
      else
        settled = settled + reap(c)
        local before = #closed
        close_tree(c, 'expired', ARGV[2], closed) -- its open children first
        settled = settled + 1 + #closed - before
        closed[#closed + 1] = rid
        local blob = save(c)
        retain(c, ARGV[2])
        settle_parent(c) -- an expired child returns what it left to its open parent
        if c.st[11] ~= '' then owed[#owed + 1] = blob end
      end
    else
      settled = settled + reap(c)
      if c.dirty then save(c) end
      redis.call('ZADD', ikey, score(deadline(c)), rid) -- it may have been scored early
    end
  end
end
local reply = {settled, #full}
for _, k in ipairs(full) do reply[#reply + 1] = k end
reply[#reply + 1] = #closed
for _, rid in ipairs(closed) do reply[#reply + 1] = rid end
reply[#reply + 1] = #wanted
for _, rid in ipairs(wanted) do reply[#reply + 1] = rid end
for _, blob in ipairs(owed) do reply[#reply + 1] = blob end
return reply

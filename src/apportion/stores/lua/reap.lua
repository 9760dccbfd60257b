-- Store.reap over buckets. KEYS: the buckets' indexes (PREFIX:{bN}:open), one or many:
-- many on a standalone server (one round trip), one per call on a cluster.
-- ARGV: now, retention (ms), most requests to look at per bucket.
-- A request's own keys are built here from its index key: they share its hash tag.
-- Returns: grants and requests settled; how many buckets had more due than the limit,
-- and their positions in KEYS; how many requests it closed, and their ids; then the final
-- ledger of each pooled request it closed. An expired request closes its open children
-- first (they count as closed requests too).
local settled, full, closed, owed = 0, {}, {}, {}
local limit = tonumber(ARGV[3])
for k, ikey in ipairs(KEYS) do
  local base = string.sub(ikey, 1, -5)
  local due = redis.call('ZRANGEBYSCORE', ikey, '-inf', ARGV[1], 'LIMIT', 0, limit)
  if #due >= limit then full[#full + 1] = k end
  for _, rid in ipairs(due) do
    local c = load(base .. 'r:' .. rid, base .. 'e:' .. rid, ikey, ARGV[1])
    if not c or c.st[2] ~= 'open' then
      redis.call('ZREM', ikey, rid)
    else
      settled = settled + reap(c)
      if tonumber(c.st[4]) <= c.now then
        local before = #closed
        close_tree(c, 'expired', ARGV[2], closed) -- its open children first
        settled = settled + 1 + #closed - before
        closed[#closed + 1] = rid
        local blob = save(c)
        retain(c, ARGV[2])
        settle_parent(c) -- an expired child returns what it left to its open parent
        if c.st[11] ~= '' then owed[#owed + 1] = blob end
      else
        if c.dirty then save(c) end
        redis.call('ZADD', ikey, score(deadline(c)), rid) -- it may have been scored early
      end
    end
  end
end
local reply = {settled, #full}
for _, k in ipairs(full) do reply[#reply + 1] = k end
reply[#reply + 1] = #closed
for _, rid in ipairs(closed) do reply[#reply + 1] = rid end
for _, blob in ipairs(owed) do reply[#reply + 1] = blob end
return reply

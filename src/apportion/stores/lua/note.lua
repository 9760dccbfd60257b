-- Store.note: a feed-only event of one request (no ledger change). KEYS: ledger, events,
-- index, operation record (unused), feed. ARGV (after the operation id and digest, unused):
-- now, agent, grant id, context tokens, output tokens, kind, note.
-- Published with the request's state as it is (the agent's tokens held and consumed), and
-- kept in the request's events list, where its ledger's events are (the store's events()
-- leaves notes out, history() reads both): it lives as long as they do.
local c = load(KEYS[1], KEYS[2], KEYS[3], ARGV[1])
if not c then return {'unknown'} end
local ai = agent_index(c, ARGV[2])
if not ai then return unknown_agent(c, 0) end
local st = c.st
local ev = cjson.encode({ARGV[6], ARGV[1], ARGV[2], tonumber(ARGV[3]), tonumber(ARGV[4]),
  tonumber(ARGV[5]), false, 0, ARGV[7], 0})
redis.call('RPUSH', KEYS[2], ev)
publish(st[1], st[2], ev, int(st[at(c, RBY, ai)]), int(st[at(c, CBY, ai)]), int(st[8]),
  int(st[6]))
return {'ok'}

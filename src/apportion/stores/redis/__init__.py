"""The Redis store: ledgers and shared pools in Redis, for many processes and many hosts.

Selected by URL, ``store="redis://[:password@]host:port/db"`` (needs the ``redis`` extra).
Every ledger operation is one Lua function (``stores/lua/*.lua``, package data) of one
Redis Functions library, called with ``FCALL`` (on a server without functions, before Redis
7, the same code runs as scripts with ``EVALSHA``; see :mod:`apportion.stores.redis.scripts`):
atomic, one round trip, and the function returns the full state after the operation, so
the controller and its policy read the new state without a second call.
Refusals come back as codes and are raised as the very errors, with the very fields, of
:class:`~apportion.ledger.Ledger`, in its order of validation; a refused operation changes
nothing (except expiring ended leases, as the ledger does).

Keys. A request's keys share one hash tag, its *bucket* ``{bN}`` (``N`` is a CRC-32 of the
request id modulo ``buckets``; for a child request, of its root's id, the part of its id
before the first ``::``), so that each request script touches one hash slot, and the
scripts of a request tree (opening children, closing a tree) the slot of its root:

* ``PREFIX:{bN}:r:ID``: the ledger, one flat MessagePack array (layout in ``lua/common.lua``);
* ``PREFIX:{bN}:e:ID``: the event list (each script appends to it in the same step), and
  the request's notes in their places (``events`` leaves them out, ``history`` keeps them);
* ``PREFIX:{bN}:o:ID``: the request's operation ids, a hash (id -> digest of the
  arguments and what the reply adds to the state), written by the script of each operation
  that carried an id, in the same step, with the TTL of the ledger's key (see "Operation
  ids" in ``lua/common.lua``);
* ``PREFIX:{bN}:open``: the bucket's open requests, scored at or before their next
  deadline (the earliest lease end, or the request's expiry): what ``reap`` scans;
* ``PREFIX:{bN}:d:DRAW``: set only when a pool draw of the request is settled without it
  (``void``: given back, never to be opened), or when a new open of the same id replaces a
  closed ledger that had drawn (that ledger, set aside for its draw's settlement).

The event feed is one stream per prefix, ``PREFIX:feed`` (on a Redis Cluster one per
bucket: see "Redis Cluster" below): every request script declares it
last in ``KEYS`` and adds each event it records to it (``XADD ... MAXLEN ~ 100000``) in
the same step as the change, with the request's state after it; ``feed`` reads it with
``XREAD`` (``BLOCK`` while waiting), ``note`` adds a feed-only event (``note.lua``).
``open_requests`` reads the buckets' ``open`` indexes (one pipeline), never the keys.

A pool's keys share the tag ``{p:NAME}``: ``PREFIX:{p:NAME}:pool`` (its configuration, the
newest window drawn from and its count) and ``PREFIX:{p:NAME}:draws`` (one entry per draw
not settled yet: the window it was charged to, its tokens and its open deadline);
``PREFIX:pools`` lists the pools' names.

Time. Scripts use the ``now`` the caller passes (the controller's injected clock), never
Redis's clock, so leases, expiry and windows follow the same clock as in the memory store.
Keys also carry Redis TTLs in real seconds: an open request's keys live ``ttl + retention``
(no TTL when ``ttl`` is infinite, nor for a request that drew from a pool: its draw is
settled from its ledger, so that ledger is never lost while open), a closed request's
``retention_seconds``; after that it is gone and ``get`` raises ``UnknownRequest``. A child
request's keys live at least as long as its parent's (none while the parent's have none),
so a child left unreaped is still there when its parent closes and folds it back; should a
child's ledger be gone all the same (evicted, deleted), its parent charges the child's whole
draw as used when it closes (what the child used is not known: usage is never dropped, and
the draw is never handed out again). The
callers' clocks may disagree: pool windows never go back (:mod:`apportion.pools`), so no
skew lets a window grant more than its capacity.

Leases are reaped lazily, as in the ledger: every operation first releases its request's
grants whose lease ended at or before ``now``. ``reap(now)`` does it for every request and
closes the overdue ones, in one script over every bucket, and returns the unused tokens of
the requests it closed to their pools.

Pools cost one more round trip at open and at close: a pool lives in its own hash slot, so
drawing (at open) and giving back (at close) are scripts of their own. Each draw is
recorded and settled exactly once, so a failure between the two steps never returns tokens
twice, and ``reap`` (its reconcile step) settles what the failed step left:

* a closed request whose give-back never ran returns what it left unused;
* a draw whose request never opened (the connection cut after the draw, the process killed
  between the steps, the server restarting) carries an open deadline, ``now +
  open_grace_seconds`` on the drawing caller's clock. Once a reaper's ``now`` passes it by
  ``clock_skew_seconds`` (the stated bound on the skew between hosts), ``pool_void.lua``
  marks the draw void in the request's own slot and the draw is given back in full. The
  open script refuses a void draw, atomically (same slot), so an open that still comes
  later raises :class:`~apportion.errors.PoolDrawExpired` and nothing is counted twice,
  whatever the clocks say: skew beyond the bound can only refuse a slow open, never
  overspend. (Refusing any open past its deadline, on the open's own clock, would not do:
  a stalled caller's ``now`` is as old as its draw.)
* a draw whose request is open stays out until the request closes: the request's keys
  carry no TTL while it is open (``reap`` closes it once its ``ttl`` has passed). A closed
  ledger that a new open of the same id replaces is set aside under its draw's key, so its
  draw is still settled by what it used.

What is left to the operator: run ``reap`` at least once per ``retention_seconds`` (a closed
ledger whose give-back failed lives that long). A void mark lives that long too, so only a
caller stalled for longer than ``retention_seconds`` between its draw and its open could
still open on tokens already given back. Keep Redis from losing writes
(``maxmemory-policy noeviction``, AOF with ``appendfsync always``): a ledger Redis itself
loses (evicted, deleted, or among the last writes before a crash) cannot be told from a
request that never opened, and its draw comes back in full.

Durability. What survives a crash of the Redis server is what its append-only file (AOF)
holds, and that is set on the server, not here (``appendonly yes`` and ``appendfsync``);
an acknowledged operation is a grant or settlement the client believes happened:

* ``appendfsync always``: every script's effects are written and fsynced before its reply
  is sent, so a crash of the Redis process loses no acknowledged operation, nor does a
  crash of the host as long as the disk honours fsync. Slowest (one fsync per write,
  shared by the operations of one event-loop turn).
* ``appendfsync everysec`` (Redis's default): fsync once a second, so a crash can lose up
  to about the last second of acknowledged operations (two, when the disk is slow): tokens
  handed out again, since a grant is gone and its tokens are free, or usage forgotten, since
  a settlement is gone. On a crash of the host (power, kernel), and also on a crash of the
  Redis process alone while the disk is busy: Redis then holds writes back and still
  replies (measured: one SIGKILL lost 337 acknowledged finishes; with an idle disk, none).
* ``appendfsync no``: every write is handed to the OS before its reply (a crash of the
  Redis process alone loses nothing), but the OS decides when it reaches the disk
  (typically within 30 s on Linux), so a crash of the host can lose that much.
* No AOF: a restart keeps at most the last RDB snapshot.

Under every setting a script's effects are all or nothing (Redis writes a script's
writes to the AOF as one transaction and drops an incomplete one at load), so the state
after a restart is consistent: every ledger's invariants hold; only recent operations may
be missing. :meth:`RedisStore.durability` reads which setting the server runs with.

Failures. A connection failure raises :class:`~apportion.errors.StoreUnavailable` (with the
URL, never its password, and the reason): when it came after the operation was sent (the
connection dropped, or no reply in time), :class:`~apportion.errors.StoreOutcomeUnknown`,
since the operation may have been applied. Nothing is retried here; the caller retries
with the same operation id (the controller does), which the scripts answer with the first
outcome. A pooled ``open`` with an operation id draws under a key made from it, so its
retry finds the draw made (``pool_draw.lua``) instead of drawing again. That is fail-closed, the
default. With ``fail_open=True``, a request that cannot be opened in Redis is opened in a
local :class:`~apportion.stores.memory.MemoryStore` instead, with a ``RuntimeWarning``,
drawing its ceiling from a per-process emergency budget of ``emergency_cap`` tokens (what it
leaves unused returns to that budget at close); requests already in Redis still raise.
That is :class:`~apportion.stores.fail_open.FailOpenStore`, which works around any store:
``RedisStore(url, fail_open=True)`` builds a
:class:`~apportion.stores.redis.store.FailOpenRedisStore`, both that wrapper and a
``RedisStore``.

Speed. Each thread keeps one connection of its own (no pool checkout per call); with
``hiredis`` (in the extra) replies parse in C. ``round_trips`` counts the round trips made.

Redis Cluster. ``redis+cluster://host:port`` (``rediss+cluster://``: TLS) connects with
redis-py's ``RedisCluster`` (sync and async), made on first use. Every request script
touches the keys of one slot (its root's bucket: ledgers, events, operation records, the
void markers, and on a cluster the bucket's own feed stream ``PREFIX:{bN}:feed``) and pool
scripts the keys of another (``{p:NAME}``); ``reap`` runs one script per bucket (one
pipeline). On a cluster the feed's entries carry the server's clock in microseconds
(``common.lua``) and readers merge the buckets' streams in that order, then by bucket
(cursor ``U-S-B``), polling while they wait. A child's id shares its root's bucket (the
part before the first ``::``), or ``open_children`` raises ``InvalidArgument``. A cluster
URL against a standalone server, and a plain URL against a cluster node (``INFO cluster``
is read once), raise ``InvalidArgument`` naming which it found.
The scripts of a request tree (``children.lua``, and ``close`` / ``reap`` closing a tree
and folding a child back into its parent) stay in the tree's one slot and touch only keys
declared in ``KEYS``, as a cluster requires: ``close`` first declares the request's own
keys and its likely parent's (its id less the last ``::`` part: no read); when the script
finds the tree holds requests not declared (open children, or a tree that changed since it
was read), it writes nothing and names them, and the store reads the tree from them (its
ledgers, a level per round trip) and calls again. ``reap`` reads each bucket's due
requests and their trees first, then runs the script on those keys; a request due since,
or whose tree changed, is left for the next round. After ``_TREE_ATTEMPTS`` (16) attempts
in a row that met a changed tree, ``StoreUnavailable`` says so (nothing was changed by
them). A flat request's ``close`` stays one round trip.

Modules. :mod:`~apportion.stores.redis.store` holds :class:`RedisStore` (its options and
public API), built from :mod:`~apportion.stores.redis.keys` (the key layout),
:mod:`~apportion.stores.redis.transport` (connections, and the sync and async shells that
carry out the calls of :mod:`~apportion.stores.redis.calls`),
:mod:`~apportion.stores.redis.requests` (the request operations),
:mod:`~apportion.stores.redis.reap`, :mod:`~apportion.stores.redis.pools` and
:mod:`~apportion.stores.redis.feed`; :mod:`~apportion.stores.redis.codec` reads and writes
the stored documents, :mod:`~apportion.stores.redis.scripts` reads the Lua code (as a
functions library and as scripts),
:mod:`~apportion.stores.redis.arguments` and :mod:`~apportion.stores.redis.refusals` turn
input into script arguments and refusals into errors, :mod:`~apportion.stores.redis.url`
reads the URL's options.

Child budgets. ``open_children`` is one script (``children.lua``): it splits what the
parent can spare, records each draw in the parent's ledger and writes each child's ledger,
in one step, so children racing from many processes never draw more than the parent can
spare. A ledger document carries its tree section (parent, depth, priority rank, the
closed children's usage, the open children's draws: see ``lua/common.lua``).
"""

from __future__ import annotations

from apportion.stores.redis.codec import ledger_from_stored
from apportion.stores.redis.scripts import SCRIPTS
from apportion.stores.redis.store import RedisStore

__all__ = ["SCRIPTS", "RedisStore", "ledger_from_stored"]

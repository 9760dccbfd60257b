"""Every error apportion raises: one root, subclasses that carry fields.

Each error keeps the facts that explain it as attributes (``agent``, ``requested``,
``available``, ``file``, ``line``, ``key`` ...), so callers can act on them without parsing
messages. A refused operation raises before it changes anything: the ledger is exactly as
it was. :class:`UsageWarning` (a ``UserWarning``) is the one warning of this kind: a
settlement made with usage apportion had to estimate.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from apportion.limits import excerpt, listing, printable


class ApportionError(Exception):
    """Root of every error apportion raises.

    Keyword arguments become attributes, and are listed in ``fields``.
    """

    def __init__(self, message: str, **fields: Any) -> None:
        message = printable(message)  # a lone surrogate from a bad file cannot be printed
        super().__init__(message)
        self.message = message
        self.fields: dict[str, Any] = fields
        for name, value in fields.items():
            setattr(self, name, value)

    def __reduce__(self) -> tuple[Any, ...]:
        return (_rebuild, (type(self), self.message, self.fields))


def _rebuild(cls: type[ApportionError], message: str, fields: dict[str, Any]) -> ApportionError:
    error = cls.__new__(cls)
    ApportionError.__init__(error, message, **fields)
    return error


class SpecError(ApportionError, ValueError):
    """A pipeline, workload or budget file (or object) is invalid.

    Attributes:
        file: the file's path, or ``None`` for objects built in code.
        line: 1-based line of the offending key, or ``None``.
        key: dotted path of the offending key (``agents[2].after``), or ``None``.
    """

    file: str | None
    line: int | None
    key: str | None
    problem: str

    def __init__(
        self,
        problem: str,
        *,
        file: str | None = None,
        line: int | None = None,
        key: str | None = None,
    ) -> None:
        where = []
        if file is not None:
            where.append(f"{file}" + (f", line {line}" if line is not None else ""))
        elif line is not None:
            where.append(f"line {line}")
        if key is not None:
            where.append(f"key '{key}'" if len(key) <= 80 else f"key {excerpt(key, 80)}")
        prefix = ": ".join(where)
        shown = problem if len(problem) <= 200 else problem[:197] + "..."  # whatever it quotes
        message = f"{prefix}: {shown}" if prefix else shown
        super().__init__(message, file=file, line=line, key=key, problem=problem)


class KindConflict(SpecError):
    """Two agent kinds of a pipeline could both match one agent name.

    Attributes:
        kinds: the two kinds' names, in the order declared.
        patterns: the two patterns that overlap (``*`` for a default kind).
        example: a name both would match.
    """

    kinds: tuple[str, str]
    patterns: tuple[str, str]
    example: str

    def __init__(
        self,
        kinds: tuple[str, str],
        patterns: tuple[str, str],
        example: str,
        *,
        file: str | None = None,
        line: int | None = None,
        key: str | None = None,
    ) -> None:
        super().__init__(
            f"agent kinds {excerpt(kinds[0])} ({excerpt(patterns[0])}) and "
            f"{excerpt(kinds[1])} ({excerpt(patterns[1])}) both match names such as "
            f"{excerpt(example)}; a name may match one kind only",
            file=file,
            line=line,
            key=key,
        )
        self.fields.update(kinds=kinds, patterns=patterns, example=example)
        self.kinds, self.patterns, self.example = kinds, patterns, example


class InvalidTokenCount(ApportionError, ValueError):
    """A token count is not a non-negative integer within range.

    Attributes:
        field: which count (``input_tokens``, ``ceiling`` ...).
        value: the value given.
    """

    field: str
    value: object

    def __init__(self, field: str, value: object, reason: str) -> None:
        super().__init__(f"{field}={excerpt(value)}: {reason}", field=field, value=value)


class InvalidCeiling(InvalidTokenCount):
    """A request ceiling is zero, negative or not an integer."""


class InvalidArgument(ApportionError, TypeError, ValueError):
    """An argument of a public call has the wrong type or an impossible value.

    A subclass of both ``TypeError`` and ``ValueError``, so code written for either still
    catches it.

    Attributes:
        argument: the argument's name (``lease_seconds``, ``features``, ``url`` ...).
        value: the value given (a URL with its password hidden).
        reason: what is wrong with it.
    """

    argument: str
    value: object
    reason: str

    def __init__(self, argument: str, value: object, reason: str) -> None:
        super().__init__(
            f"{argument}={excerpt(value)}: {reason}", argument=argument, value=value, reason=reason
        )


class UnknownAgent(ApportionError, LookupError):
    """An agent name is not in the pipeline.

    Attributes:
        agent: the name given.
        known: the pipeline's agent names.
    """

    agent: object
    known: list[str]

    def __init__(self, agent: object, known: Iterable[str]) -> None:
        known_list = list(known)
        super().__init__(
            f"unknown agent {excerpt(agent)}; the pipeline has: {listing(known_list)}",
            agent=agent,
            known=known_list,
        )


class UnknownRequest(ApportionError, LookupError):
    """No open request with this id is in the store.

    Attributes:
        request_id: the id given.
    """

    request_id: str

    def __init__(self, request_id: str) -> None:
        super().__init__(f"unknown request {excerpt(request_id)}", request_id=request_id)


class DuplicateRequest(ApportionError, ValueError):
    """A request with this id is already open in the store."""

    request_id: str

    def __init__(self, request_id: str) -> None:
        super().__init__(f"request {request_id!r} is already open", request_id=request_id)


class RequestClosed(ApportionError, RuntimeError):
    """The request was closed: no grant can begin, grow or settle in it.

    Attributes:
        request_id: the request.
        status: how it closed (``closed`` or ``failed``).
    """

    request_id: str
    status: str

    def __init__(self, request_id: str, status: str) -> None:
        super().__init__(
            f"request {request_id!r} is {status}: no more operations",
            request_id=request_id,
            status=status,
        )


class NoOpenRequest(ApportionError, LookupError):
    """A budgeted call found no open request to draw on (none passed, none current).

    Attributes:
        request_id: the current request when it was closed already, else ``None``.
    """

    request_id: str | None

    def __init__(self, request_id: str | None = None) -> None:
        why = (
            f"the current request {request_id!r} is closed"
            if request_id is not None
            else "no request is open here"
        )
        super().__init__(
            f"{why}: open one around the call with `with controller.request(ceiling) as req:`"
            " (or `async with controller.arequest(ceiling) as req:`), or pass `req` explicitly;"
            " a thread does not see the request of the code that started it: wrap its"
            " function in `apportion.carry(fn)`",
            request_id=request_id,
        )


class BudgetExceeded(ApportionError):
    """A grant (or extension) larger than what this agent may draw was asked for.

    Attributes:
        agent: the agent asking.
        requested: tokens asked for.
        available: tokens this agent could have drawn at that moment.
    """

    agent: str
    requested: int
    available: int

    def __init__(self, agent: str, requested: int, available: int, *, reason: str = "") -> None:
        extra = f" ({reason})" if reason else ""
        super().__init__(
            f"agent {agent!r} asked for {requested} tokens, {available} available{extra}",
            agent=agent,
            requested=requested,
            available=available,
        )


class WrapUpTooLarge(BudgetExceeded):
    """A wrap-up reserve larger than the grant's output could hold.

    ``begin(..., wrap_up_tokens=N)`` keeps ``N`` of the grant's output tokens back for
    handing back a partial result (see :class:`~apportion.ledger.Grant`). A store refuses
    ``N`` above the grant's ``output_tokens``; the controller refuses a begin when the
    agent cannot draw ``N`` beside its least output. Either changes nothing. A subclass of
    :class:`BudgetExceeded` (``requested`` is ``N``, ``available`` the output), so code that
    handles a refused grant handles this one too.

    Attributes:
        agent: the agent asking.
        wrap_up_tokens: the reserve asked for.
        output_tokens: the output tokens the grant has (or could have).
    """

    wrap_up_tokens: int
    output_tokens: int

    def __init__(self, agent: str, wrap_up_tokens: int, output_tokens: int) -> None:
        ApportionError.__init__(
            self,
            f"agent {agent!r} asked to keep {wrap_up_tokens} tokens for wrapping up, more than "
            f"the {output_tokens} output tokens its grant can hold",
            agent=agent,
            requested=wrap_up_tokens,
            available=output_tokens,
            wrap_up_tokens=wrap_up_tokens,
            output_tokens=output_tokens,
        )


class CostExceeded(BudgetExceeded):
    """A grant (or extension) whose full-size cost could break the request's cost ceiling.

    A subclass of :class:`BudgetExceeded`, so code that handles a refused grant handles
    this one too; ``requested`` and ``available`` are in USD here.

    Attributes:
        agent: the agent asking.
        requested_usd: the grant's cost at its full size, in USD.
        available_usd: what the cost ceiling still allowed, in USD.
        model: the model the grant was priced on.
    """

    requested_usd: float
    available_usd: float
    model: str | None

    def __init__(
        self,
        agent: str,
        requested_usd: float,
        available_usd: float,
        *,
        model: str | None = None,
        reason: str = "",
    ) -> None:
        extra = f" ({reason})" if reason else ""
        on = f" on model {model!r}" if model else ""
        ApportionError.__init__(
            self,
            f"agent {agent!r} asked for a grant costing up to {requested_usd:.9f} USD{on}, "
            f"{available_usd:.9f} USD left under the cost ceiling{extra}",
            agent=agent,
            requested=requested_usd,
            available=available_usd,
            requested_usd=requested_usd,
            available_usd=available_usd,
            model=model,
        )


class InvalidPrice(ApportionError, ValueError):
    """Prices that are missing, negative or not numbers, or a cost ceiling that cannot work.

    Attributes:
        field: what was given (``input_price``, ``prices``, ``ceiling_usd`` ...).
        value: the value given.
        reason: what is wrong with it.
    """

    field: str
    value: object
    reason: str

    def __init__(self, field: str, value: object, reason: str) -> None:
        super().__init__(
            f"{field}={excerpt(value)}: {reason}", field=field, value=value, reason=reason
        )


class GrantSettled(ApportionError, RuntimeError):
    """The grant was already settled (finished, released or expired).

    Attributes:
        grant_id: the grant.
        agent: its agent.
        settled_by: ``finish``, ``release``, ``expire`` or ``close``.
    """

    grant_id: int
    agent: str
    settled_by: str

    def __init__(self, grant_id: int, agent: str, settled_by: str) -> None:
        super().__init__(
            f"grant {grant_id} of agent {agent!r} was already settled by {settled_by}",
            grant_id=grant_id,
            agent=agent,
            settled_by=settled_by,
        )


class GrantExpired(GrantSettled):
    """The grant's lease ran out before it was settled; its tokens were reclaimed.

    Raised by ``extend``, ``renew`` and ``release`` of such a grant; ``finish`` still
    settles it, late, recording all of its usage as over-use.
    """


class ForeignGrant(ApportionError, ValueError):
    """A grant from another request (or not a grant at all) was handed to this request.

    Attributes:
        grant_request_id: the request the grant belongs to.
        request_id: the request it was handed to.
    """

    grant_request_id: object
    request_id: str

    def __init__(self, grant_request_id: object, request_id: str) -> None:
        super().__init__(
            f"grant of request {grant_request_id!r} handed to request {request_id!r}",
            grant_request_id=grant_request_id,
            request_id=request_id,
        )


class UnknownPolicy(ApportionError, LookupError):
    """A policy name is not registered.

    Attributes:
        name: the name given.
        known: the registered names.
    """

    name: object
    known: list[str]

    def __init__(self, name: object, known: Iterable[str]) -> None:
        known_list = sorted(known)
        super().__init__(
            f"unknown policy {excerpt(name)}; choose one of: {', '.join(known_list)}",
            name=name,
            known=known_list,
        )


class UnknownStore(ApportionError, LookupError):
    """A store URL has a scheme no store is registered for.

    Attributes:
        url: the URL given.
        known: the registered schemes.
    """

    url: object
    known: list[str]

    def __init__(self, url: object, known: Iterable[str]) -> None:
        known_list = sorted(known)
        super().__init__(
            f"no store for {excerpt(url)}; known schemes: "
            + ", ".join(s + "://" for s in known_list),
            url=url,
            known=known_list,
        )


class MissingExtra(ApportionError, ImportError):
    """An optional dependency is not installed.

    Attributes:
        package: the module that failed to import.
        extra: the extra that installs it (``pip install "apportion[EXTRA]"``).
    """

    package: str
    extra: str

    def __init__(self, package: str, extra: str) -> None:
        super().__init__(
            f'{package} is not installed; install it with: pip install "apportion[{extra}]"',
            package=package,
            extra=extra,
        )


class PolicyConfigError(ApportionError, ValueError):
    """A policy was configured wrongly (missing budgets, bad margin ...)."""


class PolicyStateError(ApportionError, ValueError):
    """A policy's saved state cannot be read or written; nothing was loaded.

    Attributes:
        path: the file (or ``store:KEY`` for a store's shared state), or ``None``.
        problem: what is wrong (the field and why, the version found and expected ...).
        version: the state's format version, when it has one.
        expected: the version this code reads.
    """

    path: str | None
    problem: str
    version: object
    expected: int

    def __init__(
        self,
        problem: str,
        *,
        path: str | None = None,
        version: object = None,
        expected: int = 0,
    ) -> None:
        where = f"{path}: " if path is not None else ""
        super().__init__(
            f"{where}{problem}", path=path, problem=problem, version=version, expected=expected
        )


class StateVersionError(PolicyStateError):
    """A learned policy's state is of another format or version (or not a state at all).

    Attributes:
        path: where the state came from (a file, ``store:KEY``), or ``None``.
        problem: what is wrong.
        version: the state's version (``None`` when it has none).
        expected: the version this code reads.
    """


class StoreUnavailable(ApportionError, ConnectionError):
    """The store cannot be reached.

    Attributes:
        url: the store's URL.
    """

    url: str
    reason: str

    def __init__(self, url: str, reason: str) -> None:
        super().__init__(f"store {url} unavailable: {reason}", url=url, reason=reason)


class StoreOutcomeUnknown(StoreUnavailable):
    """The store may or may not have carried the operation out.

    The connection dropped, or no reply came in time, after the operation was sent.
    Retrying it with the same operation id is safe: the store answers a repeated id with
    the first outcome and changes nothing. The controller does so a bounded number of times
    before it gives up with this error.

    Attributes:
        url: the store's URL.
        reason: what went wrong.
    """


class OperationConflict(ApportionError, ValueError):
    """An operation id came back with other arguments (or for another operation).

    A store answers a repeated operation id with the first outcome; the same id with
    arguments that differ is a mistake of the caller (an id used twice), refused with this
    error and nothing changed.

    Attributes:
        op_id: the operation id.
        operation: the operation attempted with it (``begin``, ``finish`` ...).
        first: the operation it was first used for.
        request_id: the request (or pool draw) the id belongs to.
    """

    op_id: str
    operation: str
    first: str
    request_id: str

    def __init__(self, op_id: str, operation: str, first: str, request_id: str) -> None:
        what = "other arguments" if first == operation else f"a {first}"
        super().__init__(
            f"operation id {excerpt(op_id)} of request {excerpt(request_id)} was first used "
            f"for {what}: this {operation} conflicts with it, nothing was changed",
            op_id=op_id,
            operation=operation,
            first=first,
            request_id=request_id,
        )


class NoTokenizer(ApportionError, LookupError):
    """No tokenizer can be had for a model (ask for an approximate counter by name to go on).

    Attributes:
        model: the model.
        reason: why none could be had.
    """

    model: str
    reason: str

    def __init__(self, model: str, reason: str) -> None:
        super().__init__(
            f"no tokenizer for model {model!r}: {reason}; pass counter='approximate' to count "
            "about 4 characters per token instead",
            model=model,
            reason=reason,
        )


class UnknownModel(ApportionError, LookupError):
    """A model name is known to neither LiteLLM's model map nor the user's catalog.

    Attributes:
        model: the model name given.
    """

    model: str

    def __init__(self, model: str, reason: str = "not in LiteLLM's model map") -> None:
        super().__init__(f"unknown model {excerpt(model)}: {reason}", model=model)


class InputTooLarge(ApportionError):
    """Messages cannot fit a context grant even after fitting.

    Attributes:
        agent: the agent (or ``None``).
        required: tokens the irreducible part (system prompt, last user turn, tool pairs
            that must stay together) needs.
        available: tokens the context grant allows.
    """

    agent: str | None
    required: int
    available: int

    def __init__(self, required: int, available: int, *, agent: str | None = None) -> None:
        who = f"agent {agent!r}: " if agent else ""
        super().__init__(
            f"{who}the messages cannot fit {available} tokens: the system prompt, the last user "
            f"turn and the tool calls kept with their results need {required}",
            agent=agent,
            required=required,
            available=available,
        )


class PoolExhausted(BudgetExceeded):
    """A request's ceiling is more than its priority class may draw from the pool's window.

    Attributes:
        pool: the pool's name.
        priority: the request's priority class.
        requested: the ceiling asked for.
        available: what that class could draw at that moment.
        agent: ``"(pool NAME)"``, so handlers of :class:`BudgetExceeded` read it too.
    """

    pool: str
    priority: str

    def __init__(self, pool: str, requested: int, available: int, priority: str) -> None:
        ApportionError.__init__(
            self,
            f"pool {pool!r}: a {priority} request asked for {requested} tokens, "
            f"{available} available in this window",
            agent=f"(pool {pool})",
            requested=requested,
            available=available,
            pool=pool,
            priority=priority,
        )


class ChildBudgetExceeded(BudgetExceeded):
    """A child request asked its parent for more than the parent can spare.

    A subclass of :class:`BudgetExceeded`, so code that handles a refused grant handles
    this one too. The parent is unchanged.

    Attributes:
        parent_id: the parent request.
        child: the child's name (``agent`` holds it too).
        requested: tokens the child (or the children, together) asked for.
        available: tokens the parent could spare a child of that priority at that moment.
    """

    parent_id: str
    child: str

    def __init__(
        self, parent_id: str, child: str, requested: int, available: int, *, reason: str = ""
    ) -> None:
        extra = f" ({reason})" if reason else ""
        ApportionError.__init__(
            self,
            f"child {child!r} of request {parent_id!r} asked for {requested} tokens, "
            f"{available} available{extra}",
            agent=child,
            requested=requested,
            available=available,
            parent_id=parent_id,
            child=child,
        )


class TreeTooDeep(ApportionError, ValueError):
    """A child would sit deeper in its request tree than the controller allows.

    Attributes:
        parent_id: the request the child was asked of.
        depth: the depth the child would have (a root request is at depth 0).
        max_depth: the deepest a child may be (``Controller(max_depth=...)``).
    """

    parent_id: str
    depth: int
    max_depth: int

    def __init__(self, parent_id: str, depth: int, max_depth: int) -> None:
        super().__init__(
            f"a child of request {parent_id!r} would be at depth {depth}, "
            f"deeper than the limit of {max_depth}",
            parent_id=parent_id,
            depth=depth,
            max_depth=max_depth,
        )


class PoolDrawExpired(ApportionError):
    """A request's draw from its pool was given back before the request could open.

    A store that draws and opens in two steps (Redis) records a deadline with each draw;
    once it has passed, ``reap`` gives the draw back in full and refuses its open for good,
    so tokens are never counted twice. This open came too late (the process stalled between
    the two steps, or a reaper's clock ran ahead): the request was not opened and nothing
    was charged. Opening again draws afresh.

    Attributes:
        request_id: the request that was not opened.
        pool: the pool it had drawn from.
    """

    request_id: str
    pool: str

    def __init__(self, request_id: str, pool: str) -> None:
        super().__init__(
            f"request {request_id!r}: its draw from pool {pool!r} passed its open deadline "
            "and was given back; the request was not opened (open it again)",
            request_id=request_id,
            pool=pool,
        )


class UnknownPool(ApportionError, LookupError):
    """No pool of this name was defined in the store.

    Attributes:
        pool: the name given.
    """

    pool: str

    def __init__(self, pool: str) -> None:
        super().__init__(f"unknown pool {excerpt(pool)}: define it first", pool=pool)


class UnknownSink(ApportionError, LookupError):
    """A telemetry URL has a scheme no sink is registered for, or is not a URL at all.

    Attributes:
        url: the URL given (password hidden).
        known: the registered schemes.
    """

    url: str
    known: list[str]

    def __init__(self, url: str, known: Iterable[str], reason: str = "") -> None:
        known_list = sorted(known)
        why = f": {reason}" if reason else ""
        super().__init__(
            f"no telemetry sink for {excerpt(url, 200)}{why}; known schemes: "
            + ", ".join(f"{s}://" for s in known_list)
            + ", or a sink object",
            url=url,
            known=known_list,
        )


class RecordsRejected(ApportionError, ValueError):
    """Some records of a batch could not be stored (their data); the others were.

    A telemetry database refused these records for what they hold (a number beyond its
    column, ...), not for being unreachable: each was tried on its own, and every other
    record of the batch was written.

    Attributes:
        where: the database (password hidden).
        rejected: how many records were not stored.
        written: how many records of the batch were.
        reasons: ``request id: why`` of the first few rejected.
    """

    where: str
    rejected: int
    written: int
    reasons: list[str]

    def __init__(self, where: str, rejected: int, written: int, reasons: list[str]) -> None:
        super().__init__(
            f"{where}: {rejected} record(s) could not be stored ({written} were): "
            + "; ".join(reasons[:3]),
            where=where,
            rejected=rejected,
            written=written,
            reasons=reasons,
        )


class DatabaseUnavailable(ApportionError, ConnectionError):
    """A telemetry database cannot be reached or opened.

    Attributes:
        url: the database URL, its password hidden.
        reason: why (the driver's message, first line).
    """

    url: str
    reason: str

    def __init__(self, url: str, reason: str) -> None:
        super().__init__(f"cannot open database {url}: {reason}", url=url, reason=reason)


class StudyUnavailable(ApportionError, ConnectionError):
    """The storage of an allocation search (an Optuna study) cannot be used.

    Attributes:
        url: the storage URL, its password hidden.
        reason: why (not a storage URL, unreachable, a driver missing ...).
    """

    url: str
    reason: str

    def __init__(self, url: str, reason: str) -> None:
        super().__init__(f"cannot use study storage {url}: {reason}", url=url, reason=reason)


class SchemaVersionError(ApportionError, RuntimeError):
    """Telemetry written by a newer apportion: this one refuses to read or add to it.

    Attributes:
        found: the schema version of the data.
        supported: the newest schema version this apportion knows.
        where: the database URL (password hidden) or the file it came from.
    """

    found: int
    supported: int
    where: str

    def __init__(self, found: int, supported: int, where: str) -> None:
        super().__init__(
            f"{where} holds telemetry of schema version {found}; this apportion reads "
            f"versions up to {supported}: upgrade apportion to use it",
            found=found,
            supported=supported,
            where=where,
        )


class InvalidDuration(ApportionError, ValueError):
    """A duration (``--older-than 30d``) that is not one.

    Attributes:
        option: the option or argument it was given for.
        value: what was given.
        reason: what a duration must be.
    """

    option: str
    value: str
    reason: str

    def __init__(self, option: str, value: object, reason: str) -> None:
        shown = excerpt(value)
        super().__init__(
            f"{option} {shown}: {reason}", option=option, value=str(value)[:200], reason=reason
        )


class UnsupportedCall(ApportionError, NotImplementedError):
    """A client method that would make a model call apportion cannot budget.

    Raised instead of letting the call leave uncapped (a budgeted OpenAI client's
    ``completions.create``, ``images``, ``chat.completions.stream`` ...).

    Attributes:
        method: the method called (``completions.create`` ...).
        reason: why it cannot be budgeted, and what to use instead.
    """

    method: str
    reason: str

    def __init__(self, method: str, reason: str) -> None:
        super().__init__(
            f"{method} cannot be budgeted: {reason}; no uncapped call was made",
            method=method,
            reason=reason,
        )


class UsageWarning(UserWarning):
    """A grant was settled with usage apportion had to estimate, not the provider's report.

    Warned by ``req.finish`` when the caller passes no usage (``None``), or 0 output tokens
    beside an answer's ``text`` (glue that trusted a stream without usage would settle 0
    for a billed answer). The settlement is flagged ``usage_estimated`` on the call record
    and ``estimated`` in telemetry. Filter it like any warning
    (``warnings.simplefilter("ignore", UsageWarning)``); the flag stays.

    Attributes:
        agent: the agent whose grant was settled.
        grant_id: the grant's id in its request.
        reported: the output tokens the caller reported (``None``: none).
        input_tokens: the input tokens settled.
        output_tokens: the output tokens settled.
    """

    agent: str
    grant_id: int
    reported: int | None
    input_tokens: int
    output_tokens: int

    def __init__(
        self,
        message: str,
        *,
        agent: str,
        grant_id: int,
        reported: int | None,
        input_tokens: int,
        output_tokens: int,
    ) -> None:
        super().__init__(printable(message))
        self.agent = agent
        self.grant_id = grant_id
        self.reported = reported
        self.input_tokens = input_tokens
        self.output_tokens = output_tokens


class UnsupportedVersion(ApportionError, ImportError):
    """An installed framework is outside the version range an adapter supports.

    Attributes:
        package: the distribution (``openai-agents`` ...).
        version: the version installed.
        supported: the supported range (``>=0.24,<0.25``).
        extra: the extra that installs a supported version (``None``: not named).
    """

    package: str
    version: str
    supported: str
    extra: str | None

    def __init__(
        self, package: str, version: str, supported: str, extra: str | None = None
    ) -> None:
        install = f' (pip install "apportion[{extra}]")' if extra else ""
        super().__init__(
            f"{package} {version} is not supported: apportion needs {package}{supported}" + install,
            package=package,
            version=version,
            supported=supported,
            extra=extra,
        )

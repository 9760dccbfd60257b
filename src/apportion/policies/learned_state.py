"""The learned policy's state: its JSON document, and merging it between workers.

The state is the outcome regression's sufficient statistics per pipeline
(:class:`~apportion.policies.outcome_model.OutcomeModel`), which add up: a worker merges
what it learned since its last merge into the store's copy by compare-and-set
(:func:`merge`, over :func:`~apportion.policies.sharing.compare_and_set`) and continues
from the sum; a new worker starts from the store's copy (:func:`pull`).

The document (:data:`STATE_FORMAT`, version :data:`STATE_VERSION`)::

    {"format": "apportion.learned", "version": 2,
     "pipelines": {"NAME": {"agents": ["a", "b"], "stats": [...]}}}

A document of another format or version is refused with
:class:`~apportion.errors.StateVersionError`; statistics for other agents than a known
pipeline's with :class:`~apportion.errors.PolicyConfigError`.
"""

from __future__ import annotations

import json
from collections.abc import Mapping

import numpy as np

from apportion.errors import PolicyConfigError, SpecError, StateVersionError
from apportion.files import load_json
from apportion.policies.outcome_model import OutcomeModel
from apportion.policies.sharing import SharedState, compare_and_set

__all__ = ["STATE_FORMAT", "STATE_VERSION", "decode", "encode", "fit_width", "merge", "pull"]

STATE_FORMAT = "apportion.learned"
STATE_VERSION = 2
"""Version of the exported state; a state of another version is refused."""

Tables = dict[str, np.ndarray]
"""Statistics per pipeline name."""


def encode(tables: Mapping[str, np.ndarray], models: Mapping[str, OutcomeModel]) -> bytes:
    """The state document of ``tables`` (agents named for the pipelines in ``models``)."""
    document = {
        "format": STATE_FORMAT,
        "version": STATE_VERSION,
        "pipelines": {
            name: {
                "agents": list(models[name].agents) if name in models else None,
                "stats": stats.tolist(),
            }
            for name, stats in sorted(tables.items())
        },
    }
    return json.dumps(document, sort_keys=True).encode("utf-8")


def decode(
    data: bytes | str, models: Mapping[str, OutcomeModel], where: str | None = None
) -> Tables:
    """The statistics per pipeline of a state document, checked against ``models``.

    Args:
        data: the document.
        models: the outcome models known so far, by pipeline name.
        where: where the document came from (a file, ``store:KEY``), for errors.

    Raises:
        StateVersionError: not a learned state, or one of another version.
        PolicyConfigError: a known pipeline's statistics are for other agents.
    """
    try:
        document = load_json(data)
    except SpecError as exc:
        raise StateVersionError(
            f"not a learned policy state: {exc.problem}", path=where, expected=STATE_VERSION
        ) from None
    if not isinstance(document, Mapping) or document.get("format") != STATE_FORMAT:
        raise StateVersionError("not a learned policy state", path=where, expected=STATE_VERSION)
    version = document.get("version")
    if version != STATE_VERSION or not isinstance(document.get("pipelines"), Mapping):
        raise StateVersionError(
            f"learned state version {version!r} is incompatible with version "
            f"{STATE_VERSION} (this code)",
            path=where,
            version=version,
            expected=STATE_VERSION,
        )
    tables: Tables = {}
    for name, entry in document["pipelines"].items():
        model = models.get(name)
        agents = entry.get("agents") if isinstance(entry, Mapping) else None
        if model is not None and agents is not None and tuple(agents) != model.agents:
            raise PolicyConfigError(
                f"the learned state's agents {agents} are not pipeline {name!r}'s "
                f"{list(model.agents)}"
            )
        try:
            stats = np.asarray(entry["stats"], dtype=float)
        except (KeyError, TypeError, ValueError):
            raise StateVersionError(
                f"learned state of pipeline {name!r} has no statistics",
                path=where,
                version=version,
                expected=STATE_VERSION,
            ) from None
        if model is not None:
            fit_width(name, stats, model.width)
        tables[name] = stats
    return tables


def fit_width(name: str, stats: np.ndarray, width: int) -> np.ndarray:
    """``stats``, checked to be statistics of a regression of ``width`` weights.

    Raises:
        PolicyConfigError: they are for another number of agents.
    """
    if stats.shape != (width * width + width + 2,):
        raise PolicyConfigError(
            f"the learned state of pipeline {name!r} is for another number of agents"
        )
    return stats


def pull(
    store: SharedState, key: str, name: str, models: Mapping[str, OutcomeModel]
) -> np.ndarray | None:
    """The store's statistics of pipeline ``name`` (``None``: it has none).

    Raises:
        StateVersionError: the store holds another format or version under ``key``.
    """
    got = store.get_state(key)
    return None if got is None else decode(got[1], models, f"store:{key}").get(name)


def merge(
    store: SharedState,
    key: str,
    delta: Mapping[str, np.ndarray],
    models: Mapping[str, OutcomeModel],
) -> Tables:
    """Add one worker's ``delta`` to the store's statistics under ``key``; the sum.

    Raises:
        StateVersionError: the store holds another format or version under ``key``.
        ApportionError: other workers kept writing first (too much contention).
    """

    def update(data: bytes | None) -> tuple[bytes, Tables]:
        merged = {} if data is None else decode(data, models, f"store:{key}")
        for name, d in delta.items():
            merged[name] = merged[name] + d if name in merged else d
        return encode(merged, models), merged

    return compare_and_set(store, key, update)

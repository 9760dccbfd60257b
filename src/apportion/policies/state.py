"""Saving what a predicting policy learned, and sharing it through a store.

Two documents, both JSON, both versioned:

* a policy file (:data:`FILE_FORMAT`, written by ``policy.save(path)``, read by
  ``Policy.load(path)``): the policy's name, its need models per pipeline
  (:meth:`~apportion.policies.needs.NeedModel.document`) and, for ``learned``, its
  outcome statistics;
* the shared need models in a store (:data:`SHARED_FORMAT`, under one key, read and
  written with ``get_state`` / ``put_state``, :class:`~apportion.policies.sharing.SharedState`):
  the need model of every pipeline, each worker merging what it learned by compare-and-set
  (:func:`~apportion.policies.sharing.compare_and_set`).

A document of another format or version, or with a malformed field, raises
:class:`~apportion.errors.PolicyStateError` naming the file (or ``store:KEY``) and the
problem; everything is checked before anything is applied, so a refused load changes
nothing. Writes go to a temporary file renamed over the target, so a crash mid-write
leaves the previous file whole.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from apportion.errors import PolicyStateError, SpecError
from apportion.files import load_json, write_atomic
from apportion.policies.needs import NeedModel, StateProblem
from apportion.spec import Agent, Pipeline

FILE_FORMAT = "apportion.policy"
FILE_VERSION = 1
"""Version of the policy file; a file of another version is refused."""

SHARED_FORMAT = "apportion.needs"
SHARED_VERSION = 1
"""Version of the need models shared in a store; another version is refused."""


def read_file(path: str | Path) -> dict[str, Any]:
    """The policy file at ``path``, its format and version checked.

    Raises:
        PolicyStateError: the file cannot be read, is not JSON, or is not a policy file of
            :data:`FILE_VERSION`.
    """
    where = str(path)
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise PolicyStateError(f"cannot read: {exc.strerror or exc}", path=where) from None
    return checked_document(data, FILE_FORMAT, FILE_VERSION, "a policy state file", where)


def write_file(path: str | Path, document: Mapping[str, Any]) -> None:
    """Write ``document`` to ``path`` atomically (a temporary file renamed over it).

    Raises:
        PolicyStateError: the file cannot be written.
    """
    data = json.dumps(document, sort_keys=True)
    try:
        write_atomic(path, data)
    except OSError as exc:
        raise PolicyStateError(f"cannot write: {exc.strerror or exc}", path=str(path)) from None


def file_document(policy: str, needs: Mapping[str, Any], **parts: Any) -> dict[str, Any]:
    """A policy file's document: ``needs`` per pipeline, plus the policy's own ``parts``."""
    return {
        "format": FILE_FORMAT,
        "version": FILE_VERSION,
        "policy": policy,
        "needs": dict(needs),
        **parts,
    }


def parse_needs(entries: object, field: str, where: str) -> dict[str, NeedModel]:
    """The need models of a document's ``field``, one per pipeline name, every field checked.

    Raises:
        PolicyStateError: a model is malformed (the message names the field).
    """
    if not isinstance(entries, Mapping):
        raise PolicyStateError(f"{field}: expected a mapping of pipeline name to model", path=where)
    models: dict[str, NeedModel] = {}
    for name, entry in entries.items():
        models[str(name)] = parse_model(str(name), entry, f"{field}.{name}", where)
    return models


def parse_model(name: str, entry: object, field: str, where: str) -> NeedModel:
    """One pipeline's need model from a document entry (its own agent list is checked).

    Raises:
        PolicyStateError: the entry is malformed.
    """
    agents = entry.get("agents") if isinstance(entry, Mapping) else None
    try:
        if not isinstance(agents, list) or not agents:
            raise StateProblem(f"{field}.agents: expected a list of agent names")
        names = Pipeline([Agent(str(a)) for a in agents], name=name or "pipeline")
        return NeedModel.from_document(names, entry, field)
    except StateProblem as exc:
        raise PolicyStateError(str(exc), path=where) from None
    except ValueError as exc:  # agent names that are no pipeline (duplicates, blanks)
        raise PolicyStateError(f"{field}.agents: {exc}", path=where) from None


def check_agents(model: NeedModel, pipeline: Pipeline, where: str) -> None:
    """Refuse a saved model whose agents are not ``pipeline``'s.

    Raises:
        PolicyStateError: the agents differ.
    """
    if model.agents != pipeline.names:
        raise PolicyStateError(
            f"the need model of pipeline {pipeline.name!r} was learned for agents "
            f"{list(model.agents)}, this pipeline has {list(pipeline.names)}",
            path=where,
        )


def decode_shared(data: bytes, where: str) -> dict[str, Any]:
    """The raw need-model entries per pipeline of a store's shared document.

    Raises:
        PolicyStateError: the document is not shared need models of :data:`SHARED_VERSION`.
    """
    document = checked_document(data, SHARED_FORMAT, SHARED_VERSION, "shared need models", where)
    pipelines = document.get("pipelines")
    if not isinstance(pipelines, Mapping):
        raise PolicyStateError("pipelines: expected a mapping", path=where)
    return dict(pipelines)


def encode_shared(pipelines: Mapping[str, Any]) -> bytes:
    """A store's shared document holding ``pipelines`` (raw entries)."""
    document = {
        "format": SHARED_FORMAT,
        "version": SHARED_VERSION,
        "pipelines": dict(pipelines),
    }
    return json.dumps(document, sort_keys=True).encode("utf-8")


def checked_document(data: bytes, form: str, version: int, what: str, where: str) -> dict[str, Any]:
    """A JSON document of ``form`` at ``version`` (a saved or shared policy state).

    Raises:
        PolicyStateError: not JSON, another format or another version (``what`` says what
            was expected, ``where`` names the file or ``store:KEY``).
    """
    try:
        document = load_json(data)
    except SpecError as exc:
        raise PolicyStateError(f"not {what}: {exc.problem}", path=where, expected=version) from None
    if not isinstance(document, dict) or document.get("format") != form:
        found = document.get("format") if isinstance(document, dict) else None
        raise PolicyStateError(
            f"not {what}: format {found!r}, expected {form!r}", path=where, expected=version
        )
    found_version = document.get("version")
    if found_version != version:
        raise PolicyStateError(
            f"{what} of version {found_version!r}; this apportion reads version {version}",
            path=where,
            version=found_version,
            expected=version,
        )
    return document

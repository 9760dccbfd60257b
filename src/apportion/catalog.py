"""The model catalog: prices, limits and capability of the models a request may run on.

Two layers, searched in this order:

1. the user's models: a YAML file (``Catalog.from_yaml``) or :class:`ModelInfo` objects,
   for private deployments and to override LiteLLM's figures field by field;
2. LiteLLM's bundled model cost map (``model_prices_and_context_window_backup.json``),
   read offline and **without importing LiteLLM** (:func:`bundled_cost_map`).

The YAML file has the shape of the ``models`` section of a workload file::

    models:
      - name: my-llama                 # a new model, or a LiteLLM name to override
        input_price: 0.20              # USD per million input tokens
        output_price: 0.60             # USD per million output tokens
        context_window: 32000
        max_output: 4096
        capability: {structured: 0.95, prose: 0.8, reasoning: 0.5}

Capability (quality factor per output kind, in [0, 1]) is declared by the user. ``routed``
takes the table as a prior and corrects it from outcome scores
(:mod:`apportion.policies.capability`); it offers a priced model without a table too, from
a neutral prior. A policy that does not learn it offers only models with a table.
"""

from __future__ import annotations

import functools
import importlib.util
import json
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from apportion.errors import InvalidPrice, UnknownModel
from apportion.ledger import nano_prices
from apportion.limits import excerpt
from apportion.spec import OutputKind
from apportion.yamlfile import YamlList, YamlMap, load_yaml

COST_MAP_FILE = "model_prices_and_context_window_backup.json"
LITELLM = "LiteLLM's bundled model cost map"
OUTPUT_KINDS = tuple(kind.value for kind in OutputKind)
_FIELDS = frozenset(
    {"name", "input_price", "output_price", "context_window", "max_output", "capability"}
)


@functools.cache
def bundled_cost_map() -> dict[str, Any]:
    """LiteLLM's bundled model cost map, read without importing LiteLLM ({} without it)."""
    try:
        spec = importlib.util.find_spec("litellm")
    except (ImportError, ValueError):
        return {}
    if spec is None or spec.origin is None:
        return {}
    path = Path(spec.origin).parent / COST_MAP_FILE
    try:
        table = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return table if isinstance(table, dict) else {}


@dataclass(frozen=True)
class ModelInfo:
    """One model of the catalog.

    Attributes:
        name: the model's name (a LiteLLM model name when calls go through LiteLLM).
        input_price: USD per million input tokens, or ``None`` when unknown.
        output_price: USD per million output tokens, or ``None`` when unknown.
        context_window: input plus output tokens of one call, or ``None``.
        max_output: output tokens of one call, or ``None``.
        capability: quality factor per output kind, or ``None`` when not declared.
        source: the catalog it came from.
    """

    name: str
    input_price: float | None = None
    output_price: float | None = None
    context_window: int | None = None
    max_output: int | None = None
    capability: Mapping[str, float] | None = None
    source: str = "user"

    def __post_init__(self) -> None:
        for name in ("input_price", "output_price"):
            value = getattr(self, name)
            if value is not None:
                nano_prices(value, 0.0)  # raises InvalidPrice on a negative or absurd price
        if self.capability is not None:
            object.__setattr__(self, "capability", check_capability(self.capability, self.name))

    @property
    def priced(self) -> bool:
        """Whether both prices are known."""
        return self.input_price is not None and self.output_price is not None

    def nano_prices(self) -> tuple[int, int]:
        """``(input, output)`` prices in integer nano-USD per token, rounded up.

        Raises:
            InvalidPrice: a price is absent.
        """
        if self.input_price is None or self.output_price is None:
            raise InvalidPrice(
                "prices", None, f"model {self.name!r} ({self.source}) has no input/output price"
            )
        return nano_prices(self.input_price, self.output_price)

    def cost(self, input_tokens: int, output_tokens: int) -> float:
        """USD cost of a call, from the exact (unrounded) prices; 0 when unpriced."""
        return (
            input_tokens * (self.input_price or 0.0) + output_tokens * (self.output_price or 0.0)
        ) / 1e6

    def capable(self, kind: str) -> float:
        """Capability for an output kind (1.0 when no table is declared)."""
        if self.capability is None:
            return 1.0
        return float(self.capability.get(str(kind), 1.0))


def check_capability(table: Mapping[str, Any], model: str = "") -> dict[str, float]:
    """A capability table checked: known output kinds, numbers in [0, 1].

    Raises:
        InvalidPrice: an unknown output kind or a value outside [0, 1].
    """
    if not isinstance(table, Mapping):
        raise InvalidPrice("capability", table, "a capability table maps output kinds to numbers")
    clean: dict[str, float] = {}
    for kind, value in table.items():
        if kind not in OUTPUT_KINDS:
            raise InvalidPrice(
                "capability",
                kind,
                f"model {model!r}: unknown output kind {kind!r}; known: {', '.join(OUTPUT_KINDS)}",
            )
        if (
            isinstance(value, bool)
            or not isinstance(value, int | float)
            or not math.isfinite(value)
            or not 0.0 <= value <= 1.0
        ):
            raise InvalidPrice(
                f"capability.{kind}", value, f"model {model!r}: capability is a number in [0, 1]"
            )
        clean[str(kind)] = float(value)
    return clean


@dataclass
class Catalog:
    """The models known to a controller: the user's first, then LiteLLM's bundled map.

    Args:
        models: the user's models (new ones, or overrides of LiteLLM's by name; a field
            left ``None`` keeps LiteLLM's value).
        litellm: also search LiteLLM's bundled model cost map.
        name: how the user's catalog is named in errors (its file, by default ``user``).
    """

    models: Iterable[ModelInfo] = ()
    litellm: bool = True
    name: str = "user catalog"
    _own: dict[str, ModelInfo] = field(init=False, repr=False)
    _bundled: dict[str, ModelInfo | None] = field(init=False, repr=False, compare=False)
    """LiteLLM's entries read so far, by name (the bundled map does not change)."""

    def __post_init__(self) -> None:
        self._own = {}
        self._bundled = {}
        for model in self.models:
            if not isinstance(model, ModelInfo):
                raise TypeError(f"a catalog holds ModelInfo objects, not {model!r}")
            self._own[model.name] = model
        self.models = tuple(self._own.values())

    @classmethod
    def from_yaml(cls, path: str | Path, *, litellm: bool = True) -> Catalog:
        """A catalog from a YAML file (``models:`` list), over LiteLLM's map.

        Raises:
            SpecError: the file is not valid (unknown key, missing name ...).
            InvalidPrice: a negative price, or a capability table with an unknown kind.
        """
        root = load_yaml(path)
        if not isinstance(root, YamlMap):
            raise InvalidPrice("catalog", str(path), "a catalog file is a mapping with 'models'")
        root.check_keys({"models"}, ("models",))
        items = root["models"]
        if not isinstance(items, YamlList):
            root.fail("models", "'models' is a list of models")
        models = []
        for index, entry in enumerate(items):
            if not isinstance(entry, YamlMap):
                items.fail(index, "a model is a mapping")
            entry.check_keys(_FIELDS, ("name",))
            models.append(_model_of(entry, str(path)))
        return cls(models, litellm=litellm, name=str(path))

    @property
    def searched(self) -> list[str]:
        """The catalogs searched, in order."""
        names = [self.name] if self._own or not self.litellm else []
        return names + ([LITELLM] if self.litellm else [])

    def _litellm(self, name: str) -> ModelInfo | None:
        if not self.litellm:
            return None
        if name in self._bundled:
            return self._bundled[name]
        found = self._bundled[name] = self._read_litellm(name)
        return found

    def _read_litellm(self, name: str) -> ModelInfo | None:
        table = bundled_cost_map()
        for key in (name, name.split("/", 1)[-1]):
            entry = table.get(key)
            if isinstance(entry, Mapping) and key != "sample_spec":
                return _litellm_model(name, entry)
        return None

    def find(self, name: str) -> ModelInfo | None:
        """The model called ``name``, or ``None``."""
        own = self._own.get(name)
        base = self._litellm(name)
        if own is None:
            return base
        if base is None:
            return own
        return replace(
            base,
            **{
                key: getattr(own, key)
                for key in ("input_price", "output_price", "context_window", "max_output")
                if getattr(own, key) is not None
            },
            capability=own.capability if own.capability is not None else base.capability,
            source=f"{own.source} over {base.source}",
        )

    def get(self, name: str) -> ModelInfo:
        """The model called ``name``.

        Raises:
            UnknownModel: in none of the catalogs (the error names those searched).
        """
        model = self.find(name) if isinstance(name, str) else None
        if model is None:
            searched = " and ".join(self.searched) or "no catalog"
            raise UnknownModel(
                name if isinstance(name, str) else excerpt(name), f"not in {searched}"
            )
        return model

    def routable(self, *, undeclared: bool = False) -> list[ModelInfo]:
        """The user's priced models with a declared capability table (routing offers).

        Args:
            undeclared: offer priced models without a table too (a policy that learns
                capability from outcome scores gives them a prior of its own).
        """
        return [
            m
            for m in (self.get(n) for n in self._own)
            if m.priced and (undeclared or m.capability is not None)
        ]


def _model_of(entry: YamlMap, source: str) -> ModelInfo:
    name = entry["name"]
    if not isinstance(name, str) or not name:
        entry.fail("name", "a model name is a non-empty string")
    for key in ("context_window", "max_output"):
        value = entry.get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
            entry.fail(key, f"{key} is a positive integer")
        if value is not None and value <= 0:
            entry.fail(key, f"{key} is a positive integer")
    return ModelInfo(
        name,
        input_price=entry.get("input_price"),
        output_price=entry.get("output_price"),
        context_window=entry.get("context_window"),
        max_output=entry.get("max_output"),
        capability=entry.get("capability"),
        source=source,
    )


def _litellm_model(name: str, entry: Mapping[str, Any]) -> ModelInfo:
    def price(key: str) -> float | None:
        value = entry.get(key)
        if isinstance(value, int | float) and not isinstance(value, bool) and value >= 0:
            return float(value) * 1e6
        return None

    def count(*keys: str) -> int | None:
        for key in keys:
            value = entry.get(key)
            if isinstance(value, int) and not isinstance(value, bool) and value > 0:
                return value
        return None

    return ModelInfo(
        name,
        input_price=price("input_cost_per_token"),
        output_price=price("output_cost_per_token"),
        context_window=count("max_input_tokens", "max_tokens"),
        max_output=count("max_output_tokens", "max_tokens"),
        source=LITELLM,
    )

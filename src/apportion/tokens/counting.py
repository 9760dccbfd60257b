"""Token counts per model: tiktoken for OpenAI models, LiteLLM's counter for the others.

:func:`counter_for` picks a :class:`TokenCounter` for a model name and caches it:

* OpenAI models (``gpt-*``, ``o1``/``o3``/``o4*``, ``chatgpt-*``, ``text-embedding-*`` ...,
  also behind an ``openai/`` or ``azure/`` prefix) count with tiktoken: the encoding
  tiktoken names for the model, else the family's (``o200k_base`` for gpt-4o, gpt-4.1,
  gpt-4.5, gpt-5 and the o-series; ``cl100k_base`` for gpt-4 and gpt-3.5).
* Other models count with LiteLLM's ``token_counter``, with the tokenizer LiteLLM selects
  for the model (its packaged Anthropic tokenizer for Claude models, a Hugging Face
  tokenizer for Llama and Command-R models, else tiktoken's ``cl100k_base``). When LiteLLM
  has no tokenizer of its own for a model it silently counts with ``cl100k_base``; that is
  accepted only when LiteLLM claims the model (it is in LiteLLM's model map, where
  ``litellm.register_model`` also puts it). Otherwise, and when the Hugging Face tokenizer
  LiteLLM wants is not in the local Hugging Face cache (apportion never downloads one),
  :class:`~apportion.errors.NoTokenizer` is raised.
* ``counter="approximate"`` counts about 4 characters per token, for any model. It is
  never chosen silently: ask for it by name.

Message counts follow the OpenAI cookbook's approximation of the chat template ("How to
count tokens with tiktoken"): 3 tokens per message, 1 more for a ``name``, 3 to prime the
reply. It is an estimate of what the provider will bill, not the provider's own count.

Offline use: tiktoken downloads its encoding files unless ``TIKTOKEN_CACHE_DIR`` points at
a folder that holds them (files named by the SHA-1 of their URL). LiteLLM ships
``cl100k_base``, ``p50k_base`` and ``o200k_base`` that way in
``litellm/litellm_core_utils/tokenizers/``. Before apportion first loads a tiktoken
encoding, if neither ``TIKTOKEN_CACHE_DIR`` nor ``DATA_GYM_CACHE_DIR`` (tiktoken's older
name for it) is set and that folder exists, apportion sets ``TIKTOKEN_CACHE_DIR`` to it in
``os.environ`` (found without importing LiteLLM). Importing LiteLLM itself sets
``LITELLM_LOCAL_MODEL_COST_MAP=True`` first (unless the variable is already set), so that
LiteLLM reads its bundled model map instead of fetching it.

Neither tiktoken nor LiteLLM is imported until a counter needs it.
"""

from __future__ import annotations

import abc
import functools
import importlib
import importlib.util
import json
import math
import os
import re
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from apportion.errors import InvalidArgument, MissingExtra, NoTokenizer
from apportion.limits import excerpt

if TYPE_CHECKING:
    import tiktoken

__all__ = [
    "APPROXIMATE_CHARS_PER_TOKEN",
    "COUNTER_NAMES",
    "IMAGE_TOKENS_HIGH",
    "IMAGE_TOKENS_LOW",
    "RECENT_TEXTS",
    "RECENT_TEXT_CHARS",
    "REPLY_PRIMING_TOKENS",
    "TOKENS_PER_MESSAGE",
    "TOKENS_PER_NAME",
    "TOOLS_OVERHEAD_TOKENS",
    "TOOL_CALL_OVERHEAD_TOKENS",
    "ApproximateCounter",
    "LiteLLMCounter",
    "TiktokenCounter",
    "TokenCounter",
    "count_messages",
    "counter_for",
    "litellm_tokenizers_dir",
]

TOKENS_PER_MESSAGE = 3
"""Tokens every chat message costs besides its content (``<|start|>role<|message|>...``)."""
TOKENS_PER_NAME = 1
"""Extra tokens for a message's ``name``."""
REPLY_PRIMING_TOKENS = 3
"""Tokens that prime the reply (``<|start|>assistant<|message|>``), once per call."""
TOOLS_OVERHEAD_TOKENS = 9
"""Tokens the tool section of the prompt costs besides the definitions, once per call."""
TOOL_CALL_OVERHEAD_TOKENS = 3
"""Tokens each tool call in an assistant message costs besides its name and arguments."""
IMAGE_TOKENS_LOW = 85
"""Flat estimate for an image part with ``detail: "low"`` (OpenAI's low-detail price)."""
IMAGE_TOKENS_HIGH = 765
"""Flat estimate for any other image part: a 1024x1024 image in high detail (85 + 4 x 170).

Real images cost what their size makes them cost; apportion does not fetch images to
measure them."""
APPROXIMATE_CHARS_PER_TOKEN = 4
"""Characters per token of the approximate counter."""

COUNTER_NAMES: tuple[str, ...] = ("approximate", "litellm", "tiktoken", "tiktoken:<encoding>")
"""The counter names :func:`counter_for` takes (besides ``None``, which chooses by model)."""


RECENT_TEXTS = 4096
"""How many recent texts' counts a tiktoken counter keeps (see :data:`RECENT_TEXT_CHARS`)."""

RECENT_TEXT_CHARS = 4096
"""The longest text whose count is kept (the kept texts hold at most 16 Mi characters)."""


class TokenCounter(abc.ABC):
    """Counts the tokens of text, chat messages and tool definitions for one model.

    A subclass needs only :meth:`count_text`; the message and tool counts built on it
    follow the OpenAI cookbook's approximation of the chat template. Counters hold no
    per-call state and may be shared between threads.

    Attributes:
        model: the model the counter counts for.
        approximate: ``True`` only for the approximate counter asked for by name.
    """

    model: str = ""
    approximate: bool = False

    @abc.abstractmethod
    def count_text(self, text: str) -> int:
        """Return the number of tokens ``text`` encodes to."""

    def count_message(self, message: Mapping[str, Any]) -> int:
        """Return the tokens of one chat message, its per-message overhead included.

        Counted: :data:`TOKENS_PER_MESSAGE`; every string value (``role``, ``content``,
        ``name`` plus :data:`TOKENS_PER_NAME`, ``tool_call_id`` ...); content parts (text and
        refusal parts as text, image parts as a flat :data:`IMAGE_TOKENS_LOW` or
        :data:`IMAGE_TOKENS_HIGH`, any other part as its JSON, which overestimates);
        ``tool_calls`` (each call's name and arguments plus
        :data:`TOOL_CALL_OVERHEAD_TOKENS`) and a legacy ``function_call``.

        Raises:
            TypeError: ``message`` is not a mapping, or its content is neither a string nor
                a list of parts.
        """
        if not isinstance(message, Mapping):
            raise InvalidArgument("message", message, "a chat message must be a mapping")
        tokens = TOKENS_PER_MESSAGE
        for key, value in message.items():
            if value is None:
                continue
            if key == "content":
                tokens += self._count_content(value)
            elif key == "tool_calls":
                tokens += sum(self._count_call(call) for call in _as_list(value, "tool_calls"))
            elif key == "function_call":
                tokens += self._count_call({"function": value})
            elif isinstance(value, str):
                tokens += self.count_text(value)
                if key == "name":
                    tokens += TOKENS_PER_NAME
        return tokens

    def count_tools(self, tools: Sequence[Mapping[str, Any]] | None) -> int:
        """Return the tokens tool definitions add to a call (0 for none).

        Each definition counts as the compact JSON of its ``function`` object (of the whole
        tool for other tool types), plus :data:`TOOLS_OVERHEAD_TOKENS` once. Providers render
        the definitions in their own format; JSON is a close, slightly high, estimate.
        """
        if not tools:
            return 0
        tokens = TOOLS_OVERHEAD_TOKENS
        for index, tool in enumerate(tools):
            if not isinstance(tool, Mapping):
                raise InvalidArgument(f"tools[{index}]", tool, "a tool must be a mapping")
            definition = tool.get("function", tool)
            tokens += self.count_text(_compact_json(definition))
        return tokens

    def count_messages(
        self,
        messages: Sequence[Mapping[str, Any]],
        tools: Sequence[Mapping[str, Any]] | None = None,
    ) -> int:
        """Return the prompt tokens of a call: its messages, the reply priming and the tools.

        That is ``sum(count_message(m)) + REPLY_PRIMING_TOKENS + count_tools(tools)``, the
        cookbook's approximation of the chat template.
        """
        _check_messages(messages)
        total = sum(self.count_message(message) for message in messages)
        return total + REPLY_PRIMING_TOKENS + self.count_tools(tools)

    def _count_content(self, content: object) -> int:
        if isinstance(content, str):
            return self.count_text(content)
        if isinstance(content, Sequence) and not isinstance(content, bytes | bytearray):
            return sum(self._count_part(part) for part in content)
        raise InvalidArgument(
            "content", content, "message content must be a string or a list of parts"
        )

    def _count_part(self, part: object) -> int:
        if isinstance(part, str):
            return self.count_text(part)
        if not isinstance(part, Mapping):
            raise InvalidArgument("content", part, "a content part must be a mapping")
        kind = part.get("type")
        if kind in ("text", "input_text", "output_text") and isinstance(part.get("text"), str):
            return self.count_text(part["text"])
        if kind == "refusal" and isinstance(part.get("refusal"), str):
            return self.count_text(part["refusal"])
        if kind in ("image_url", "image", "input_image"):
            image = part.get("image_url")
            detail = image.get("detail") if isinstance(image, Mapping) else part.get("detail")
            return IMAGE_TOKENS_LOW if detail == "low" else IMAGE_TOKENS_HIGH
        return self.count_text(_compact_json(part))

    def _count_call(self, call: object) -> int:
        if not isinstance(call, Mapping):
            raise InvalidArgument("tool_calls", call, "a tool call must be a mapping")
        function = call.get("function")
        if not isinstance(function, Mapping):
            function = {}
        tokens = TOOL_CALL_OVERHEAD_TOKENS
        name = function.get("name")
        if isinstance(name, str):
            tokens += self.count_text(name)
        arguments = function.get("arguments")
        if isinstance(arguments, str):
            tokens += self.count_text(arguments)
        elif arguments is not None:
            tokens += self.count_text(_compact_json(arguments))
        return tokens

    def __repr__(self) -> str:
        return f"{type(self).__name__}(model={self.model!r})"


class TiktokenCounter(TokenCounter):
    """Counts with a tiktoken encoding (exact for OpenAI models' text).

    Attributes:
        encoding_name: the tiktoken encoding (``o200k_base``, ``cl100k_base`` ...).
    """

    def __init__(self, model: str, encoding_name: str) -> None:
        """Load ``encoding_name`` (offline when LiteLLM ships it; see the module docstring).

        Raises:
            ValueError: tiktoken has no encoding of that name.
            NoTokenizer: the encoding's file is neither cached nor downloadable.
            MissingExtra: tiktoken is not installed.
        """
        self.model = model
        self.encoding_name = encoding_name
        self._encoding = _load_encoding(model, encoding_name)

    def count_text(self, text: str) -> int:
        """Return the number of tokens ``text`` encodes to (special tokens as plain text).

        The counts of the last :data:`RECENT_TEXTS` texts of at most
        :data:`RECENT_TEXT_CHARS` characters are kept, for every counter of the process
        together: a pipeline sends its system prompts and its thread so far again with
        every call.
        """
        if len(text) <= RECENT_TEXT_CHARS:
            return _recent_length(self._encoding, text)
        return _encoded_length(self._encoding, text)

    def __repr__(self) -> str:
        return f"TiktokenCounter(model={self.model!r}, encoding_name={self.encoding_name!r})"


def _encoded_length(encoding: tiktoken.Encoding, text: str) -> int:
    return len(encoding.encode_ordinary(text))  # special tokens as plain text


_recent_length = functools.lru_cache(maxsize=RECENT_TEXTS)(_encoded_length)


class ApproximateCounter(TokenCounter):
    """Counts about :data:`APPROXIMATE_CHARS_PER_TOKEN` characters per token, for any model.

    Used only when asked for by name (``counter="approximate"``); ``approximate`` is True.
    """

    approximate = True

    def __init__(self, model: str) -> None:
        """Make an approximate counter labelled with ``model``."""
        self.model = model

    def count_text(self, text: str) -> int:
        """Return ``ceil(len(text) / 4)``."""
        return math.ceil(len(text) / APPROXIMATE_CHARS_PER_TOKEN)


_HF_DOWNLOADED_TOKENIZERS: dict[str, str] = {
    "cohere": "Xenova/c4ai-command-r-v01-tokenizer",
    "llama2": "hf-internal-testing/llama-tokenizer",
    "llama3": "Xenova/llama-3-tokenizer",
}
"""LiteLLM's tokenizer kinds it fetches from the Hugging Face Hub, and their repositories."""


class LiteLLMCounter(TokenCounter):
    """Counts with ``litellm.token_counter`` and the tokenizer LiteLLM selects for the model.

    A provider prefix LiteLLM knows (``anthropic/claude-...``) is stripped before the
    tokenizer is selected, as LiteLLM selects by the bare name. Images are counted with
    LiteLLM's default image size (never fetched). LiteLLM's message counts use the same
    cookbook overheads as :class:`TokenCounter`.

    Attributes:
        tokenizer: ``"anthropic"``, ``"llama3"``, ``"llama2"``, ``"cohere"`` (LiteLLM's
            Hugging Face tokenizers) or ``"tiktoken"`` (its ``cl100k_base`` default).
    """

    def __init__(self, model: str) -> None:
        """Import LiteLLM and select the tokenizer for ``model``.

        Raises:
            NoTokenizer: LiteLLM neither has a tokenizer for the model nor claims it, or the
                Hugging Face tokenizer it uses is not in the local cache.
            MissingExtra: LiteLLM is not installed.
        """
        litellm = _import_litellm()
        self.model = model
        self._litellm = litellm
        self._bare = _strip_provider(litellm, model)
        kind = _huggingface_kind(litellm, self._bare)
        claimed = _litellm_claims(litellm, model, self._bare)
        if kind in _HF_DOWNLOADED_TOKENIZERS:
            self._tokenizer: Any = _cached_hf_tokenizer(litellm, model, kind)
        else:
            if kind is None and not claimed:
                raise NoTokenizer(
                    model,
                    "LiteLLM does not know this model (it is not in LiteLLM's model map) and "
                    "has no tokenizer for it; it would only guess with cl100k_base",
                )
            self._tokenizer = _select_tokenizer(litellm, self._bare)
            if self._tokenizer.get("type") != "huggingface_tokenizer":
                if not claimed:
                    raise NoTokenizer(model, f"LiteLLM could not load its {kind} tokenizer")
                kind = None
        self.tokenizer: str = kind or "tiktoken"

    def count_text(self, text: str) -> int:
        """Return the number of tokens of ``text`` by LiteLLM's tokenizer for the model."""
        return int(self._count(text=text))

    def count_message(self, message: Mapping[str, Any]) -> int:
        """Return LiteLLM's count of one message, its per-message overhead included."""
        if not isinstance(message, Mapping):
            raise InvalidArgument("message", message, "a chat message must be a mapping")
        return int(self._count(messages=[dict(message)], count_response_tokens=True))

    def count_tools(self, tools: Sequence[Mapping[str, Any]] | None) -> int:
        """Return the tokens LiteLLM counts for tool definitions (0 for none)."""
        if not tools:
            return 0
        with_tools = self._count(messages=[], tools=_tool_list(tools))
        return int(with_tools - self._count(messages=[]))

    def count_messages(
        self,
        messages: Sequence[Mapping[str, Any]],
        tools: Sequence[Mapping[str, Any]] | None = None,
    ) -> int:
        """Return ``litellm.token_counter(model, messages=..., tools=...)``."""
        _check_messages(messages)
        listed = [dict(message) for message in messages]
        return int(self._count(messages=listed, tools=_tool_list(tools) if tools else None))

    def _count(self, **arguments: Any) -> Any:
        if getattr(self._litellm, "disable_token_counter", False) is True:
            raise NoTokenizer(self.model, "litellm.disable_token_counter is set")
        if "messages" in arguments:
            arguments["use_default_image_token_count"] = True
        return self._litellm.token_counter(
            model=self._bare, custom_tokenizer=self._tokenizer, **arguments
        )

    def __repr__(self) -> str:
        return f"LiteLLMCounter(model={self.model!r}, tokenizer={self.tokenizer!r})"


def counter_for(model: str, counter: str | TokenCounter | None = None) -> TokenCounter:
    """Return the token counter for ``model``.

    Args:
        model: the model name, as given to the provider or to LiteLLM.
        counter: ``None`` to choose by model (tiktoken for OpenAI models, LiteLLM for the
            others); ``"approximate"`` for about 4 characters per token; ``"tiktoken"`` for
            the model's tiktoken encoding; ``"tiktoken:<encoding>"`` for a named encoding;
            ``"litellm"`` for LiteLLM's counter; or a :class:`TokenCounter`, returned as is.

    Returns:
        A counter, cached per ``(model, counter)``.

    Raises:
        NoTokenizer: no tokenizer can be had for the model (the error says why).
        MissingExtra: tiktoken or LiteLLM, whichever is needed, is not installed.
        ValueError: ``counter`` is not one of the names (the error lists them), or names an
            encoding tiktoken does not have.
    """
    if isinstance(counter, TokenCounter):
        return counter
    if not isinstance(model, str) or not model:
        raise InvalidArgument("model", model, "a model is a non-empty string")
    if counter is not None and not isinstance(counter, str):
        raise InvalidArgument("counter", counter, "a counter is a name or a TokenCounter")
    if counter is not None and not _is_counter_name(counter):
        raise InvalidArgument(
            "counter",
            counter,
            f"unknown token counter; choose one of: {', '.join(COUNTER_NAMES)} "
            "(or None to choose by model)",
        )
    return _cached_counter(model, counter)


def count_messages(
    model: str,
    messages: Sequence[Mapping[str, Any]],
    tools: Sequence[Mapping[str, Any]] | None = None,
    counter: str | TokenCounter | None = None,
) -> int:
    """Return the prompt tokens of ``messages`` (and ``tools``) for ``model``.

    Shorthand for ``counter_for(model, counter).count_messages(messages, tools)``.
    """
    return counter_for(model, counter).count_messages(messages, tools)


def litellm_tokenizers_dir() -> Path | None:
    """Return LiteLLM's folder of tiktoken encoding files, or ``None`` without LiteLLM.

    Found from the package's location; LiteLLM is not imported.
    """
    try:
        spec = importlib.util.find_spec("litellm")
    except (ImportError, ValueError):
        return None
    if spec is None or spec.origin is None:
        return None
    folder = Path(spec.origin).parent / "litellm_core_utils" / "tokenizers"
    return folder if folder.is_dir() else None


# -- choosing ----------------------------------------------------------------------------

_OPENAI_NAME = re.compile(
    r"^(?:ft:)?(?:gpt-|chatgpt-|o[1-9](?:-|$)|text-embedding-|text-davinci-|code-davinci-|"
    r"davinci|babbage)"
)
_O200K_FAMILY = re.compile(
    r"^(?:ft:)?(?:gpt-4o|gpt-4\.1|gpt-4\.5|gpt-5|chatgpt-4o|o[1-9](?:-|$)|gpt-realtime|"
    r"gpt-audio|gpt-image|codex-)"
)
_CL100K_FAMILY = re.compile(
    r"^(?:ft:)?(?:gpt-4|gpt-3\.5|gpt-35|text-embedding-3|text-embedding-ada-002)"
)
_OPENAI_PREFIXES = ("openai/", "azure/")


def _openai_name(model: str) -> str | None:
    """Return the bare OpenAI model name of ``model``, or ``None`` if it is not OpenAI's."""
    name = model
    for prefix in _OPENAI_PREFIXES:
        if name.startswith(prefix):
            name = name[len(prefix) :]
            break
    return name if _OPENAI_NAME.match(name) else None


def _tiktoken_encoding_name(model: str, name: str) -> str:
    tiktoken_model = _import_tiktoken_model()
    try:
        encoding: str = tiktoken_model.encoding_name_for_model(name)
        return encoding
    except KeyError:
        pass
    if _O200K_FAMILY.match(name):
        return "o200k_base"
    if _CL100K_FAMILY.match(name):
        return "cl100k_base"
    raise NoTokenizer(
        model,
        "tiktoken does not know this model and it matches no OpenAI model family; pass "
        "counter='tiktoken:o200k_base' (or another encoding) to choose one",
    )


def _is_counter_name(name: str) -> bool:
    if name in ("approximate", "litellm", "tiktoken"):
        return True
    return name.startswith("tiktoken:") and len(name) > len("tiktoken:")


@functools.lru_cache(maxsize=256)
def _cached_counter(model: str, counter: str | None) -> TokenCounter:
    if counter == "approximate":
        return ApproximateCounter(model)
    if counter == "litellm":
        return LiteLLMCounter(model)
    if counter is not None and counter.startswith("tiktoken:"):
        return TiktokenCounter(model, counter.partition(":")[2])
    openai_name = _openai_name(model)
    if counter == "tiktoken":
        name = openai_name if openai_name is not None else model
        return TiktokenCounter(model, _tiktoken_encoding_name(model, name))
    if openai_name is not None:
        return TiktokenCounter(model, _tiktoken_encoding_name(model, openai_name))
    return LiteLLMCounter(model)


# -- tiktoken ----------------------------------------------------------------------------

_cache_lock = threading.Lock()


def _use_litellm_encodings() -> None:
    """Point tiktoken at LiteLLM's encoding files unless the user chose a cache folder."""
    with _cache_lock:
        if "TIKTOKEN_CACHE_DIR" in os.environ or "DATA_GYM_CACHE_DIR" in os.environ:
            return
        folder = litellm_tokenizers_dir()
        if folder is not None:
            os.environ["TIKTOKEN_CACHE_DIR"] = str(folder)


def _import_tiktoken() -> Any:
    try:
        return importlib.import_module("tiktoken")
    except ImportError as error:
        raise MissingExtra("tiktoken", "litellm") from error


def _import_tiktoken_model() -> Any:
    _import_tiktoken()
    return importlib.import_module("tiktoken.model")


def _load_encoding(model: str, name: str) -> tiktoken.Encoding:
    tiktoken_module = _import_tiktoken()
    known: list[str] = list(tiktoken_module.list_encoding_names())
    if name not in known:
        reason = f"tiktoken has no encoding {excerpt(name)}; it has: {', '.join(sorted(known))}"
        raise InvalidArgument("encoding", name, reason)
    _use_litellm_encodings()
    try:
        encoding: tiktoken.Encoding = tiktoken_module.get_encoding(name)
    except Exception as error:
        raise NoTokenizer(
            model,
            f"the tiktoken encoding {name} is not in the cache and could not be downloaded "
            f"({type(error).__name__}: {error})",
        ) from error
    return encoding


# -- LiteLLM -----------------------------------------------------------------------------


def _import_litellm() -> Any:
    """Import LiteLLM with its bundled model map (no fetch at import)."""
    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
    try:
        return importlib.import_module("litellm")
    except ImportError as error:
        raise MissingExtra(error.name or "litellm", "litellm") from error


def _strip_provider(litellm: Any, model: str) -> str:
    providers = {str(getattr(p, "value", p)) for p in getattr(litellm, "provider_list", ())}
    bare = model
    while "/" in bare:
        prefix, _, rest = bare.partition("/")
        if prefix not in providers or not rest:
            break
        bare = rest
    return bare


def _litellm_claims(litellm: Any, model: str, bare: str) -> bool:
    known: Mapping[str, Any] = getattr(litellm, "model_cost", {}) or {}
    return model in known or bare in known


def _huggingface_kind(litellm: Any, model: str) -> str | None:
    """Which Hugging Face tokenizer LiteLLM uses for ``model`` (``None``: tiktoken)."""
    helper = getattr(litellm.utils, "huggingface_tokenizer_kind", None)
    if helper is not None:
        kind: str | None = helper(model)
        return kind
    # Older LiteLLM releases: the same rules, written out.
    if model in getattr(litellm, "cohere_models", ()) and "command-r" in model:
        return "cohere"
    if model in getattr(litellm, "anthropic_models", ()) and "claude-3" not in model:
        return "anthropic"
    lowered = model.lower()
    if "llama-2" in lowered or "replicate" in lowered:
        return "llama2"
    if "llama-3" in lowered:
        return "llama3"
    return None


def _select_tokenizer(litellm: Any, model: str) -> Any:
    select = getattr(litellm.utils, "select_tokenizer", None) or litellm.utils._select_tokenizer
    return select(model)


def _cached_hf_tokenizer(litellm: Any, model: str, kind: str) -> Any:
    """Load LiteLLM's Hugging Face tokenizer from the local Hugging Face cache only."""
    repo = _HF_DOWNLOADED_TOKENIZERS[kind]
    path: object = None
    try:
        hub = importlib.import_module("huggingface_hub")
        path = hub.try_to_load_from_cache(repo, "tokenizer.json")
    except ImportError:
        path = None
    if not isinstance(path, str):
        raise NoTokenizer(
            model,
            f"LiteLLM counts this model with the Hugging Face tokenizer {repo}, which is not "
            "in the local Hugging Face cache, and apportion does not download it; fetch it "
            f"once (huggingface-cli download {repo} tokenizer.json) to count offline",
        )
    return litellm.utils.create_tokenizer(Path(path).read_text(encoding="utf-8"))


# -- helpers -----------------------------------------------------------------------------


def _check_messages(messages: object) -> None:
    if isinstance(messages, str | bytes | Mapping) or not isinstance(messages, Sequence):
        raise InvalidArgument("messages", messages, "a list of chat messages")


def _as_list(value: object, key: str) -> Sequence[object]:
    if isinstance(value, str | bytes) or not isinstance(value, Sequence):
        raise InvalidArgument(key, value, "must be a list")
    return value


def _tool_list(tools: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    listed = []
    for index, tool in enumerate(tools):
        if not isinstance(tool, Mapping):
            raise InvalidArgument(f"tools[{index}]", tool, "a tool must be a mapping")
        listed.append(dict(tool))
    return listed


def _compact_json(value: object) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False, default=str)

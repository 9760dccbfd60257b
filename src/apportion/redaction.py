"""Hiding secrets in URLs before they are shown: one function for every message.

:func:`redact` is what every error, warning, sink name and ``repr`` that names a URL (a
store's, a telemetry database's, an unknown one) shows instead of the URL itself. It errs
on the side of hiding: drivers read a password up to the last ``@`` of the authority even
when it holds ``/``, ``#`` or ``?`` unencoded, so everything between the user name and that
``@`` is hidden, and so is the value of every password-like query parameter
(``?password=``). :func:`scrub` also hides a URL's password inside any other text, such as
a driver's error message that quotes the URL.
"""

from __future__ import annotations

import re
from typing import Final
from urllib.parse import unquote

from apportion.limits import excerpt

__all__ = ["HIDDEN", "redact", "scrub"]

HIDDEN: Final = "***"
"""What a hidden secret is shown as."""

_SCHEME: Final = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")
_SECRET_KEYS: Final = r"(?:password|passwd|pwd|pass|sslpassword|secret|token|api_?key|auth)"
_QUERY_SECRET: Final = re.compile(rf"(?i)([?&;]{_SECRET_KEYS}=)[^&]*")
_DSN_SECRET: Final = re.compile(rf"(?i)((?:^|\s){_SECRET_KEYS}\s*=\s*)\S*")
_LONGEST: Final = 500


def _credentials(text: str) -> tuple[int, int] | None:
    """Where the password of ``text`` (a URL) starts and ends, or ``None``."""
    match = _SCHEME.match(text)
    start = match.end() if match else 0
    at = text.rfind("@", start)
    if at < 0:
        return None
    userinfo = text[start:at]
    colon = userinfo.find(":")
    if colon < 0 or any(c in userinfo[:colon] for c in "/?#"):
        return None  # no password, or the '@' is in a path or query, not an authority
    return start + colon + 1, at


def redact(url: object) -> str:
    """``url`` as text with its password (and password-like query values) as ``***``.

    Anything that is not a string is shown by a short ``repr``; very long text is cut to
    its first 500 characters.
    """
    text = url if isinstance(url, str) else excerpt(url, _LONGEST)
    span = _credentials(text)
    if span is not None:
        text = text[: span[0]] + HIDDEN + text[span[1] :]
    text = _QUERY_SECRET.sub(rf"\1{HIDDEN}", text)
    text = _DSN_SECRET.sub(rf"\1{HIDDEN}", text)
    return text if len(text) <= _LONGEST else text[:_LONGEST] + "..."  # cut once hidden


def _secrets(url: str) -> list[str]:
    """The secrets ``url`` holds, as written and percent-decoded, longest first."""
    found = []
    span = _credentials(url)
    if span is not None:
        found.append(url[span[0] : span[1]])
    for pattern in (_QUERY_SECRET, _DSN_SECRET):
        for match in pattern.finditer(url):
            found.append(url[match.end(1) : match.end()])
    found += [unquote(s) for s in found]
    # a driver that misreads the URL quotes a piece of the password (as a host, a path)
    found += [piece for s in found for piece in re.split(r"[/#?@:]", s) if len(piece) >= 3]
    return sorted({s for s in found if s}, key=len, reverse=True)


def scrub(text: str, url: object) -> str:
    """``text`` with ``url`` shown redacted and every secret of ``url`` hidden.

    For messages that may quote a URL, or a part of it, such as a driver's error; the
    text is cut to its first 500 characters (a message quotes an excerpt, never a file).
    """
    raw = url if isinstance(url, str) else excerpt(url, _LONGEST)
    if raw:
        text = text.replace(raw, redact(raw))
    for secret in _secrets(raw):
        text = text.replace(secret, HIDDEN)
    return text if len(text) <= _LONGEST else text[:_LONGEST] + "..."

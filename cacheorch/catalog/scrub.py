"""Remove secrets from everything the catalog persists, whatever redactor the caller passed.

The catalog is a file users copy, attach to bug reports and keep for years, so it applies its own
rules (token and password query parameters and keys) on top of the caller's ``redact``.
"""
from __future__ import annotations

import json
import re
from collections.abc import Callable
from typing import Any
from urllib.parse import unquote_plus, urlsplit, urlunsplit

__all__ = ["Scrubber", "SECRET_NAMES", "strip_url_secrets", "mask_text_secrets"]

#: Query parameters and parameter keys that are never stored (compared case-insensitively).
SECRET_NAMES = frozenset({"token", "access_token", "password", "client_secret", "api_key",
                          "apikey"})
_WHOLE_URL = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://\S*")
# ``token=v`` in a URL, ``password: v`` in a message, ``"token": "v"`` in a JSON body.
_TEXT_SECRET = re.compile(
    r"(?i)\b((?:" + "|".join(sorted(SECRET_NAMES)) + r")[\"']?\s*[:=]\s*[\"']?)"
    r"[^\s&'\"<>#,;}]+")


def strip_url_secrets(url: str) -> str:
    """``url`` without its secret query parameters (dropped, not masked: a URL is an identity).

    The other parameters keep their original spelling, so equal URLs stay equal.
    """
    parts = urlsplit(url)
    if not parts.query:
        return url
    fields = parts.query.split("&")
    kept = [f for f in fields if unquote_plus(f.partition("=")[0]).lower() not in SECRET_NAMES]
    if len(kept) == len(fields):
        return url
    return urlunsplit(parts._replace(query="&".join(kept)))


def mask_text_secrets(text: str) -> str:
    """``text`` with the value of every ``token=``-like setting in it replaced by ``***``."""
    return _TEXT_SECRET.sub(r"\1***", text)


class Scrubber:
    """Applies the catalog's rules, then the caller's ``redact``, to each kind of value stored."""

    def __init__(self, redact: Callable[[str], str] | None = None) -> None:
        self._redact = redact or (lambda text: text)

    def text(self, value: str) -> str:
        """Free text: an error, a message, a name, an output path."""
        return self._redact(mask_text_secrets(value))

    def optional_text(self, value: str | None) -> str | None:
        return None if value is None else self.text(value)

    def url(self, value: str) -> str:
        """A service URL: secret parameters dropped."""
        return self.text(strip_url_secrets(value))

    def data(self, value: Any) -> Any:
        """A JSON-able structure: secret keys dropped, every string scrubbed, recursively.

        Values that JSON cannot hold (paths, enums) are stored as their ``str``.
        """
        return self._walk(json.loads(json.dumps(value, default=str)))

    def _walk(self, value: Any) -> Any:
        if isinstance(value, dict):
            return {self.text(k): self._walk(v) for k, v in value.items()
                    if str(k).lower() not in SECRET_NAMES}
        if isinstance(value, list):
            return [self._walk(v) for v in value]
        if isinstance(value, str):
            return self.url(value) if _WHOLE_URL.fullmatch(value) else self.text(value)
        return value

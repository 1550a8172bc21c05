"""How cacheorch talks to a service: credentials, headers, timeouts, and redaction of secrets.

One object carries the token so that every place that could print or store it (logs, errors,
catalog rows, ``--json``) can call :meth:`Connection.redact` on the way out.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import requests

from cacheorch import __version__

__all__ = ["Connection", "redact_url", "USER_AGENT"]

#: Identifies cacheorch to servers, as polite crawlers do.
USER_AGENT = f"cacheorch/{__version__} (+https://pypi.org/project/cacheorch/)"
_SECRET_PARAMS = {"token", "password", "client_secret", "apikey", "api_key", "key"}


def redact_url(url: str) -> str:
    """The URL with secret query parameters (token, password...) replaced by ``***``."""
    parts = urlsplit(url)
    if not parts.query:
        return url
    query = [(k, "***" if k.lower() in _SECRET_PARAMS else v)
             for k, v in parse_qsl(parts.query, keep_blank_values=True)]
    return urlunsplit(parts._replace(query=urlencode(query, safe="*")))


@dataclass
class Connection:
    """Credentials and HTTP settings shared by the scale source, tile source and exporters.

    :param token: an ArcGIS token, sent as ``token=`` on every request; never stored or printed.
    :param referer: a Referer header (tokens issued with ``client=referer`` need it).
    """

    token: str | None = None
    referer: str | None = None
    user_agent: str = USER_AGENT
    timeout: float = 30.0
    retries: int = 4
    headers: dict[str, str] = field(default_factory=dict)
    _session: requests.Session | None = field(default=None, repr=False)

    @classmethod
    def from_env(cls, token: str | None = None, referer: str | None = None, **kw: Any) -> Connection:
        """Flags win; otherwise ``ARCGIS_TOKEN`` and ``ARCGIS_REFERER`` from the environment."""
        return cls(token=token or os.environ.get("ARCGIS_TOKEN") or None,
                   referer=referer or os.environ.get("ARCGIS_REFERER") or None, **kw)

    def __repr__(self) -> str:  # never show the token
        return f"Connection(token={'***' if self.token else None}, referer={self.referer!r})"

    def request_headers(self) -> dict[str, str]:
        headers = {"User-Agent": self.user_agent, **self.headers}
        if self.referer:
            headers["Referer"] = self.referer
        return headers

    def params(self, **extra: Any) -> dict[str, Any]:
        """Query parameters with the token added."""
        params = dict(extra)
        if self.token:
            params["token"] = self.token
        return params

    @property
    def session(self) -> requests.Session:
        """A pooled requests session for service JSON and jobs (not for bulk tiles)."""
        if self._session is None:
            s = requests.Session()
            s.headers.update(self.request_headers())
            self._session = s
        return self._session

    def redact(self, text: Any) -> str:
        """``text`` as a string with the token (and token-like URL parameters) removed."""
        out = str(text)
        if self.token:
            out = out.replace(self.token, "***")
        return re.sub(r"(?i)([?&](?:token|password)=)[^&\s'\"]+", r"\1***", out)

    def close(self) -> None:
        if self._session is not None:
            self._session.close()
            self._session = None

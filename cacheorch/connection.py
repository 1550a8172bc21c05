"""How cacheorch talks to a service: credentials, headers, timeouts, and redaction of secrets.

One object carries the token so that every place that could print or store it (logs, errors,
catalog rows, ``--json``) can call :meth:`Connection.redact` on the way out. With a
:class:`~cacheorch.tokens.TokenProvider` it also renews the token, once for however many requests
were refused together, so the scale source and the tile fetcher share one token that outlives
its expiry.
"""
from __future__ import annotations

import logging
import os
import re
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import requests

from cacheorch import __version__
from cacheorch.jsonlimits import JSONTooDeepError, loads
from cacheorch.net.acceptor import DEFAULT_MAX_TILE_SIZE
from cacheorch.tokens import TokenProvider

__all__ = ["Connection", "redact_url", "USER_AGENT", "AUTH_CODES", "NO_CREDENTIALS_HINT"]

#: Identifies cacheorch to servers, as polite crawlers do.
USER_AGENT = f"cacheorch/{__version__} (+https://pypi.org/project/cacheorch/)"
log = logging.getLogger(__name__)
#: Seconds between attempts to renew a token ahead of expiry once one failed: the tile URL
#: maker asks on every tile, and a token service that is down must not be called per tile.
_AHEAD_RETRY = 30.0
#: What ArcGIS's authorisation codes mean to a user.
AUTH_CODES = {498: "invalid or expired token", 499: "token required", 403: "access denied"}
#: Said after a refusal when no credentials were given at all.
NO_CREDENTIALS_HINT = " (set ARCGIS_TOKEN, or ARCGIS_USERNAME and ARCGIS_PASSWORD)"
_SECRET_PARAMS = {"token", "password", "client_secret", "apikey", "api_key", "key"}


#: Secret URL parameters in free text (also :func:`cacheorch.fetch.redact_text`'s pattern).
_SECRET_IN_TEXT = re.compile(
    r"(?i)([?&](?:token|password|client_secret|apikey|api_key|key)=)[^&\s'\"#]+")


class RedactingFilter(logging.Filter):
    """Masks secret URL parameters in log records of libraries that log URLs as they are.

    urllib3 logs every request line at DEBUG (``"GET /...?token=... HTTP/1.1"``); a user who
    turns on ``-vv`` to debug a job must not find the token in the log file they attach to a
    bug report. The record's message is formatted, masked, and stored without arguments.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # noqa: BLE001 - a malformed record is the logging module's to report
            return True
        masked = _SECRET_IN_TEXT.sub(r"\1***", message)
        if masked != message:
            record.msg, record.args = masked, None
        return True


#: Loggers of the libraries that put request URLs in their records.
for _name in ("urllib3.connectionpool", "requests"):
    logging.getLogger(_name).addFilter(RedactingFilter())


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
    :param token_provider: where a new token comes from when the service refuses the current
        one (or asks for one); None means the token is what it is.
    :param max_renewals_per_minute: a server that rejects every fresh token would otherwise be
        asked for a new one after every refused tile; past this rate renewal gives up.
    """

    token: str | None = None
    referer: str | None = None
    user_agent: str = USER_AGENT
    timeout: float = 30.0
    retries: int = 4
    headers: dict[str, str] = field(default_factory=dict)
    token_provider: TokenProvider | None = None
    max_renewals_per_minute: int = 10
    #: When the current token expires (POSIX seconds), if its issuer said.
    token_expires: float | None = None
    #: The service tokens are for (the token service is found from it).
    token_service: str | None = None
    #: Politeness: tile requests per second at most, over every connection (None: no limit).
    max_rps: float | None = None
    #: Stop fetching when more than this fraction of the last ``failure_window`` requests
    #: failed (None: never); the job ends failed and resumable.
    max_failure_rate: float | None = None
    failure_window: int = 200
    #: Bytes a tile may have at most; a larger one is a failed tile (see cacheorch.net.acceptor).
    max_tile_size: int = DEFAULT_MAX_TILE_SIZE
    #: Renew a token this many seconds before its issuer said it expires (at most a quarter
    #: of its lifetime, so short-lived tokens are not renewed on every request).
    renew_ahead: float = 120.0
    _token_lifetime: float | None = field(default=None, repr=False)
    #: After a failed ahead-of-expiry renewal, when (monotonic) to try ahead again.
    _ahead_retry_at: float = field(default=0.0, repr=False)
    _session: requests.Session | None = field(default=None, repr=False)
    _token_lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    _renewals: deque[float] = field(default_factory=lambda: deque(maxlen=64), repr=False)
    _retired: list[str] = field(default_factory=list, repr=False)

    @classmethod
    def from_env(cls, token: str | None = None, referer: str | None = None, **kw: Any) -> Connection:
        """Flags win; otherwise ``ARCGIS_TOKEN`` and ``ARCGIS_REFERER`` from the environment.

        ``ARCGIS_USERNAME`` and ``ARCGIS_PASSWORD`` give a token provider: a token is generated
        when a service asks for one, and renewed when it expires.
        """
        referer = referer or os.environ.get("ARCGIS_REFERER") or None
        if "token_provider" not in kw:
            kw["token_provider"] = TokenProvider.from_env(referer=referer)
        return cls(token=token or os.environ.get("ARCGIS_TOKEN") or None, referer=referer, **kw)

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

    @property
    def can_renew_token(self) -> bool:
        """Whether a refused token can be replaced (a provider is configured)."""
        return self.token_provider is not None

    def current_token(self) -> str | None:
        """The token to send now, renewed first when it is about to expire.

        Renewing ahead spares the burst of 498s (and their retries) that every request in
        flight would meet at the moment of expiry; the 498 path stays for tokens that expire
        early (revoked, or a clock that disagrees). Cheap when nothing is due: one comparison.
        """
        expires = self.token_expires
        if expires is None or self.token_provider is None:
            return self.token
        ahead = self.renew_ahead
        if self._token_lifetime is not None:
            ahead = min(ahead, self._token_lifetime / 4)
        if time.time() >= expires - ahead and time.monotonic() >= self._ahead_retry_at:
            before = self.token
            try:
                self.renew_token(before)
            except Exception as exc:  # the request will meet the 498 path and say why
                log.debug("renewing the token ahead of expiry failed: %s", self.redact(exc))
            if self.token == before:  # failed or refused: not again on every tile URL
                self._ahead_retry_at = time.monotonic() + _AHEAD_RETRY
        return self.token

    def renew_token(self, stale: str | None, url: str | None = None) -> str | None:
        """Replace the token ``stale`` that a service refused; return the token to use now.

        Many requests in flight fail together when a token expires; each calls this with the
        token it used, and only the first one to arrive asks the provider: the others find the
        token already replaced and get the new one at once. None means no new token can be had
        (no provider, or the renewal rate limit was hit); an :class:`~cacheorch.errors.AuthError`
        means the credentials were refused.

        :param url: the service the token is for (remembered for later renewals).
        """
        with self._token_lock:
            if url:
                self.token_service = url
            if self.token is not None and self.token != stale:
                return self.token  # another request renewed it meanwhile
            provider, service = self.token_provider, self.token_service
            if provider is None or service is None:
                return None
            now = time.monotonic()
            recent = [t for t in self._renewals if now - t < 60.0]
            if len(recent) >= self.max_renewals_per_minute:
                log.warning("not renewing the token again: %d renewals in the last minute; "
                            "the service refuses fresh tokens", len(recent))
                return None
            issued = provider.generate(service, self.timeout)
            self._renewals.append(now)
            if self.token:
                self._retired.append(self.token)
            self.token, self.token_expires = issued.token, issued.expires
            self._token_lifetime = None if issued.expires is None else issued.expires - time.time()
            return self.token

    def get_json(self, url: str, params: dict[str, Any] | None = None) -> Any:
        """The JSON document at ``url`` (``f=json`` and the token added), renewing the token once.

        The one way service JSON, portal items, tilemaps and job status are read: a 498/499
        (as an HTTP status or as ArcGIS's error body under HTTP 200) gets a new token from the
        provider and one more try; other refusals and ArcGIS error bodies become
        :class:`~cacheorch.errors.AuthError` / :class:`~cacheorch.errors.ServiceError` with a
        one-line, redacted message.
        """
        query = {"f": "json", **(params or {})}
        response, data = self._get_json_once(url, query)
        if self.can_renew_token and _wants_token(response, data, self.token):
            self.renew_token(self.token, url)
            response, data = self._get_json_once(url, query)
        return self._json_or_error(url, response, data)

    def _get_json_once(self, url: str, query: dict[str, Any]) -> tuple[requests.Response, Any]:
        from cacheorch.errors import ServiceError
        shown = self.redact(url)
        try:
            response = self.session.get(url, params=self.params(**query), timeout=self.timeout)
        except requests.exceptions.Timeout:
            raise ServiceError(f"{shown}: no answer within {self.timeout:g} s") from None
        except requests.exceptions.ConnectionError as exc:
            reason = str(exc.args[0] if exc.args else exc).split(":")[-1].strip(" )'\"") \
                or "refused"
            raise ServiceError(f"cannot reach {shown}: {self.redact(reason)}") from None
        except requests.exceptions.RequestException as exc:
            raise ServiceError(f"{shown}: {self.redact(type(exc).__name__)}") from None
        try:
            data = loads(response.content)
        except JSONTooDeepError as exc:
            raise ServiceError(f"{shown}: {exc}") from None
        except ValueError:
            data = None
        return response, data

    def _json_or_error(self, url: str, response: requests.Response, data: Any) -> Any:
        from cacheorch.arcgis_json import arcgis_error
        from cacheorch.errors import AuthError, ServiceError
        shown = self.redact(url)
        hint = "" if self.token or self.can_renew_token else NO_CREDENTIALS_HINT
        error = arcgis_error(data)
        if error is not None:  # ArcGIS answers errors with HTTP 200 and an error body
            code, message = error
            if code in AUTH_CODES:
                raise AuthError(f"{shown}: {AUTH_CODES[code]} (ArcGIS error {code})"
                                f"{hint if code != 403 else ''}")
            raise ServiceError(f"{shown}: ArcGIS error {code}: "
                               f"{self.redact(message) or 'no message'}")
        if response.status_code in (498, 499):
            code = response.status_code
            raise AuthError(f"{shown}: {AUTH_CODES[code]} (HTTP {code}){hint}")
        if response.status_code in (401, 403):
            raise AuthError(f"{shown}: access denied (HTTP {response.status_code})")
        if response.status_code >= 400:
            raise ServiceError(f"{shown}: HTTP {response.status_code} {response.reason}")
        if data is None:
            kind = response.headers.get("Content-Type", "unknown type").split(";")[0]
            raise ServiceError(f"{shown} did not answer JSON ({kind}, "
                               f"{len(response.content)} bytes)")
        return data

    def redact(self, text: Any) -> str:
        """``text`` as a string with the token (and token-like URL parameters) removed."""
        out = str(text)
        for secret in self._secrets():
            out = out.replace(secret, "***")
        return re.sub(r"(?i)([?&](?:token|password)=)[^&\s'\"]+", r"\1***", out)

    def _secrets(self) -> list[str]:
        secrets = [self.token] if self.token else []
        secrets += self._retired
        if self.token_provider is not None:
            secrets += self.token_provider.secrets
        return [s for s in secrets if s]

    def close(self) -> None:
        if self._session is not None:
            self._session.close()
            self._session = None


def _wants_token(response: requests.Response, data: object, token: str | None) -> bool:
    """Whether a (new) token may help: 498/499, or 401/403 while no token was sent."""
    from cacheorch.arcgis_json import arcgis_error
    error = arcgis_error(data)
    code = error[0] if error is not None else None
    if code in (498, 499) or response.status_code in (498, 499):
        return True
    return token is None and (code in (401, 403) or response.status_code in (401, 403))

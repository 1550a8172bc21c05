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
from typing import Any, Literal, NamedTuple
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import requests

from cacheorch import __version__
from cacheorch.jsonlimits import JSONTooDeepError, loads
from cacheorch.net import NetworkSettings, describe
from cacheorch.net.acceptor import DEFAULT_MAX_TILE_SIZE
from cacheorch.tokens import TokenProvider

__all__ = ["Connection", "Reauth", "redact_url", "with_token", "USER_AGENT", "AUTH_CODES",
           "NO_CREDENTIALS_HINT"]

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


class Reauth(NamedTuple):
    """The tile engine's ``reauth`` answer: the URL to retry a refused tile with, and whether its
    token was renewed for this refusal (the tile's one re-authorisation) rather than renewed by
    another request since the refused URL was made."""

    url: str
    renewed: bool


@dataclass
class Connection:
    """Credentials and HTTP settings shared by the scale source, tile source and exporters.

    :param token: an ArcGIS token, sent as ``token=`` on every request; never stored or printed.
    :param referer: a Referer header (tokens issued with ``client=referer`` need it).
    :param token_provider: where a new token comes from when the service refuses the current
        one (or asks for one); None means the token is what it is.
    :param max_renewals_per_minute: a server that rejects every fresh token would otherwise be
        asked for a new one after every refused tile; past this rate renewal gives up.
    :param network: CA bundle, proxies and timeouts of every request, JSON and tiles alike
        (default: from the environment).
    :param timeout: one number for both the connect and the read timeout (scripts, tests);
        afterwards it reads as the network's read timeout.
    """

    token: str | None = None
    referer: str | None = None
    user_agent: str = USER_AGENT
    timeout: float = None  # type: ignore[assignment]  # set in __post_init__
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
    network: NetworkSettings = None  # type: ignore[assignment]  # set in __post_init__

    def __post_init__(self) -> None:
        if self.network is None:
            self.network = NetworkSettings.build()
        if self.timeout is not None:
            self.network = self.network.with_timeout(self.timeout)
        self.timeout = self.network.read_timeout

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
        """A pooled requests session for service JSON and jobs (not for bulk tiles).

        Its CA bundle, proxies and timeouts are :attr:`network`'s, whatever a caller passes.
        """
        if self._session is None:
            from cacheorch.net.session import make_session
            self._session = make_session(self.network, self.request_headers())
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
        return self._renew(stale, url)[0]

    def _renew(self, stale: str | None, url: str | None = None, ask: bool = True
               ) -> tuple[str | None, bool]:
        """:meth:`renew_token`, and whether the provider was asked for this refusal: False when
        the token had been replaced since ``stale`` was sent (nothing is renewed for it, so the
        refused request owes nothing to the rate limit nor to its one re-authorisation), or when
        ``ask`` is False (only such a catch-up is wanted)."""
        with self._token_lock:
            if url:
                self.token_service = url
            if self.token is not None and self.token != stale:
                return self.token, False  # another request renewed it meanwhile
            provider, service = self.token_provider, self.token_service
            if provider is None or service is None or not ask:
                return None, False
            now = time.monotonic()
            recent = [t for t in self._renewals if now - t < 60.0]
            if len(recent) >= self.max_renewals_per_minute:
                log.warning("not renewing the token again: %d renewals in the last minute; "
                            "the service refuses fresh tokens", len(recent))
                return None, False
            if isinstance(provider, TokenProvider):  # the token service is reached like the rest
                provider.session = self.session
            issued = provider.generate(service, self.timeout)
            self._renewals.append(now)
            if self.token:
                self._retired.append(self.token)
            self.token, self.token_expires = issued.token, issued.expires
            self._token_lifetime = None if issued.expires is None else issued.expires - time.time()
            return self.token, True

    def reauthorised_url(self, url: str, service_url: str, renew: bool = True) -> Reauth | None:
        """``url`` carrying a renewed token, after the service refused the token it carried.

        The tile engine's ``reauth``: tile URLs carry the token in their query, so the token
        used is read back from ``url``. A token replaced since ``url`` was made is only caught
        up with (``Reauth.renewed`` False: not the tile's one re-authorisation); with ``renew``
        False nothing else is done. Credentials refused by the token service raise
        :class:`~cacheorch.errors.AuthError` (every tile would fail alike); a token service that
        cannot be reached gives None, failing only the tile, which a resume picks up.
        """
        from cacheorch.errors import AuthError, CacheorchError
        used = _token_of(url)
        try:
            token, renewed = self._renew(used, service_url, renew)
        except AuthError:
            raise
        except CacheorchError as exc:
            log.warning("token renewal failed: %s", self.redact(exc))
            return None
        if not token or token == used:
            return None
        return Reauth(with_token(url, token), renewed)

    def get_json(self, url: str, params: dict[str, Any] | None = None) -> Any:
        """The JSON document at ``url`` (``f=json`` and the token added), renewing the token once.

        The one way service JSON, portal items, tilemaps and job status are read: a 498/499
        (as an HTTP status or as ArcGIS's error body under HTTP 200) gets a new token from the
        provider and one more try (:meth:`request`); other refusals and ArcGIS error bodies become
        :class:`~cacheorch.errors.AuthError` / :class:`~cacheorch.errors.ServiceError` with a
        one-line, redacted message.
        """
        from cacheorch.errors import ServiceError
        response = self.request("GET", url, {"f": "json", **(params or {})})
        try:
            data = loads(response.content)
        except JSONTooDeepError as exc:  # said as such, not as "did not answer JSON"
            raise ServiceError(f"{self.redact(url)}: {exc}") from None
        except ValueError:
            data = None
        return self._json_or_error(url, response, data)

    def request(self, method: Literal["GET", "POST"], url: str, params: dict[str, Any], *,
                headers: dict[str, str] | None = None, stream: bool = False,
                send_token: bool = True, service_url: str | None = None) -> requests.Response:
        """One request with the token, renewed once when the service refuses it: the one renewal.

        GET sends ``params`` in the query, POST in the form body (a polygon can be long). A
        refusal (498/499, or 401/403 while no token was sent) with a provider configured gets a
        new token and one more try; the answer is returned as it is otherwise, for the caller to
        read. A failure to connect is a :class:`~cacheorch.errors.ServiceError` in words.

        :param send_token: False for URLs that carry their own authorisation (signed download
            links), which must never receive the token.
        :param service_url: the service the token is for, when ``url`` is one of its resources
            on another host (``tileServers``): the token service is found from it.
        """
        renewed = False
        while True:
            token = self.token if send_token else None
            response = self._send_once(method, url, params, token, headers, stream)
            if renewed or not send_token or not self.can_renew_token or \
                    not _wants_token(response, _peek_json(response, stream), token):
                return response
            response.close()
            token, asked = self._renew(token, service_url or url)
            renewed = asked or token is None  # a token renewed meanwhile is only caught up with

    def _send_once(self, method: str, url: str, params: dict[str, Any], token: str | None,
                   headers: dict[str, str] | None, stream: bool) -> requests.Response:
        from cacheorch.errors import CacheorchError, ServiceError
        query = dict(params, token=token) if token else dict(params)
        shown = self.redact(url)
        try:
            if method == "POST":
                return self.session.post(url, data=query, headers=headers, stream=stream)
            return self.session.get(url, params=query, headers=headers, stream=stream)
        except requests.exceptions.ReadTimeout:
            raise ServiceError(f"{shown}: no answer within {self.network.read_timeout:g} s"
                               ) from None
        except requests.exceptions.ConnectTimeout:
            raise ServiceError(f"cannot reach {shown}: no connection within "
                               f"{self.network.connect_timeout:g} s") from None
        except requests.exceptions.RequestException as exc:
            try:
                proxy = self.network.proxy_for(url)
            except CacheorchError:
                proxy = None
            reason = describe(exc, urlsplit(url).hostname, proxy)
            raise ServiceError(f"cannot reach {shown}: {self.redact(reason)}") from None

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


def _json_of(response: requests.Response) -> Any:
    """The answer's JSON (nesting bounded: cacheorch.jsonlimits), else None."""
    try:
        return loads(response.content)
    except ValueError:
        return None


def _peek_json(response: requests.Response, stream: bool) -> Any:
    """The JSON of an answer, which may be an error body; else None.

    A streamed answer is read only when it says it is JSON (or text): a package or an image
    being downloaded is never a token error, and must not be read into memory here.
    """
    ctype = response.headers.get("Content-Type", "")
    if stream and "json" not in ctype and not ctype.startswith("text/plain"):
        return None
    if not stream and b'"error"' not in response.content[:512]:
        return None  # not an error body: a large document is not parsed twice
    return _json_of(response)


def with_token(url: str, token: str) -> str:
    """``url`` with its ``token`` parameter set to ``token`` (added if absent)."""
    parts = urlsplit(url)
    query = [(k, v) for k, v in parse_qsl(parts.query, keep_blank_values=True) if k != "token"]
    query.append(("token", token))
    return urlunsplit(parts._replace(query=urlencode(query)))


def _token_of(url: str) -> str | None:
    for k, v in parse_qsl(urlsplit(url).query, keep_blank_values=True):
        if k == "token":
            return v
    return None


def _wants_token(response: requests.Response, data: object, token: str | None) -> bool:
    """Whether a (new) token may help: 498/499, or 401/403 while no token was sent."""
    from cacheorch.arcgis_json import arcgis_error
    error = arcgis_error(data)
    code = error[0] if error is not None else None
    if code in (498, 499) or response.status_code in (498, 499):
        return True
    return token is None and (code in (401, 403) or response.status_code in (401, 403))

"""Tokens from ``generateToken``: a username and password turned into the short-lived token ArcGIS
wants on every request of a secured service.

Why a provider rather than a token: a token expires (an hour here by default; servers cap it at a
day, ArcGIS Online at two weeks) and an export can outlive it. The provider keeps what is needed
to ask again, and :class:`~cacheorch.connection.Connection` asks it when a request is refused with
ArcGIS error 498 (invalid or expired token) or 499 (token required).

Where tokens come from: ``<root>/rest/info?f=json`` names the token service in
``authInfo.tokenServicesUrl`` (ArcGIS Online hosted layers and portal-federated servers point at
the portal's ``/sharing/rest/generateToken``, whose tokens the federated servers accept); when
the server does not say, ``<root>/tokens/generateToken``, ArcGIS Server's own. ``<root>`` is the
service URL up to ``/rest/services``.

What is assumed and guarded:

- The credentials come from ``ARCGIS_USERNAME`` and ``ARCGIS_PASSWORD`` only, never from flags
  (a flag shows in ``ps`` and shell history). ``ARCGIS_TOKEN_URL`` overrides discovery.
- They are asked for lazily: a public service never sees them, even when the environment has them.
- The password travels only in a POST body, and only over HTTPS: an ``http://`` token URL is
  upgraded to ``https://`` unless the host is a loopback address (test servers).
- ``client=referer`` when a Referer is configured (the token is then bound to it, and every
  request sends it), else ``client=requestip``.
- Neither the password nor any token is ever put in an exception, a log line or ``repr``.
"""
from __future__ import annotations

import ipaddress
import logging
import os
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import requests

from cacheorch.errors import AuthError, ServiceError
from cacheorch.jsonlimits import loads

__all__ = ["ENV_USERNAME", "ENV_PASSWORD", "ENV_TOKEN_URL", "IssuedToken", "TokenProvider",
           "site_root", "default_token_url"]

log = logging.getLogger(__name__)

ENV_USERNAME = "ARCGIS_USERNAME"
ENV_PASSWORD = "ARCGIS_PASSWORD"
ENV_TOKEN_URL = "ARCGIS_TOKEN_URL"


@dataclass(frozen=True, repr=False)
class IssuedToken:
    """A token and when it expires (POSIX seconds; None when the service did not say)."""

    token: str
    expires: float | None = None

    def __repr__(self) -> str:
        return f"IssuedToken(token=***, expires={self.expires!r})"


def site_root(service_url: str) -> str:
    """``https://h/arcgis/rest/services/A/MapServer`` → ``https://h/arcgis`` (the site).

    A URL without ``/rest/services`` (a proxy that rewrote paths) falls back to the host.
    """
    parts = urlsplit(service_url)
    path = parts.path
    i = path.lower().find("/rest/services")
    site = path[:i] if i >= 0 else ""
    return urlunsplit((parts.scheme, parts.netloc, site.rstrip("/"), "", ""))


def default_token_url(service_url: str) -> str:
    """ArcGIS Server's own token service for the site of ``service_url``."""
    return site_root(service_url) + "/tokens/generateToken"


def _is_loopback(host: str | None) -> bool:
    if not host:
        return False
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _secure(url: str) -> str:
    """``url`` over HTTPS unless it already is, or goes to this machine."""
    parts = urlsplit(url)
    if parts.scheme == "http" and not _is_loopback(parts.hostname):
        return urlunsplit(parts._replace(scheme="https"))
    return url


class TokenProvider:
    """Generates tokens with a username and password; safe to share between threads.

    :param expiration: minutes of validity asked for (servers may give less).
    :param referer: bind tokens to this Referer (``client=referer``); else ``client=requestip``.
    :param token_url: the ``generateToken`` URL, skipping discovery.
    """

    def __init__(self, username: str, password: str, *, referer: str | None = None,
                 expiration: int = 60, token_url: str | None = None) -> None:
        if not username or not password:
            raise AuthError(f"both {ENV_USERNAME} and {ENV_PASSWORD} are needed to get a token")
        self.username = username
        self._password = password
        self.referer = referer
        self.expiration = expiration
        self.token_url_override = token_url
        self._urls: dict[str, str] = {}
        self._lock = threading.Lock()
        #: The session of the :class:`~cacheorch.connection.Connection` using this provider: the
        #: token service is reached through the same CA bundle, proxies and timeouts as the rest.
        self.session: requests.Session | None = None

    @classmethod
    def from_env(cls, referer: str | None = None,
                 environ: Mapping[str, str] | None = None) -> TokenProvider | None:
        """A provider when ``ARCGIS_USERNAME`` and ``ARCGIS_PASSWORD`` are both set, else None."""
        env = os.environ if environ is None else environ
        username, password = env.get(ENV_USERNAME) or "", env.get(ENV_PASSWORD) or ""
        if not username and not password:
            return None
        if not username or not password:
            missing = ENV_PASSWORD if username else ENV_USERNAME
            raise AuthError(f"{missing} is not set: a token needs both {ENV_USERNAME} and "
                            f"{ENV_PASSWORD}")
        return cls(username, password, referer=referer, token_url=env.get(ENV_TOKEN_URL) or None)

    def __repr__(self) -> str:
        return f"TokenProvider(username={self.username!r}, password=***)"

    @property
    def secrets(self) -> tuple[str, ...]:
        """What must never be printed (for :meth:`Connection.redact`)."""
        return (self._password,)

    def _headers(self) -> dict[str, str]:
        from cacheorch.connection import USER_AGENT
        headers = {"User-Agent": USER_AGENT}
        if self.referer:
            headers["Referer"] = self.referer
        return headers

    def token_url(self, service_url: str, timeout: float = 30.0) -> str:
        """The ``generateToken`` URL for ``service_url``'s site, discovered once per site."""
        if self.token_url_override:
            return self.token_url_override
        root = site_root(service_url)
        with self._lock:
            known = self._urls.get(root)
        if known is not None:
            return known
        url = self._discover(root, timeout) or default_token_url(service_url)
        with self._lock:
            self._urls[root] = url
        return url

    def _discover(self, root: str, timeout: float) -> str | None:
        """``authInfo.tokenServicesUrl`` of ``<root>/rest/info``, or None if it says nothing."""
        try:
            response = (self.session or requests).get(root + "/rest/info", params={"f": "json"},
                                                      headers=self._headers(), timeout=timeout)
            data = loads(response.content) if response.status_code == 200 else None
        except (requests.exceptions.RequestException, ValueError):
            return None
        auth = data.get("authInfo") if isinstance(data, dict) else None
        url = auth.get("tokenServicesUrl") if isinstance(auth, dict) else None
        if isinstance(url, str) and url.lower().startswith(("http://", "https://")):
            return url.split("?", 1)[0]
        return None

    def generate(self, service_url: str, timeout: float = 30.0) -> IssuedToken:
        """A new token valid for ``service_url``; AuthError when the credentials are refused."""
        url = _secure(self.token_url(service_url, timeout))
        form: dict[str, Any] = {"username": self.username, "password": self._password,
                                "expiration": self.expiration, "f": "json"}
        if self.referer:
            form.update(client="referer", referer=self.referer)
        else:
            form["client"] = "requestip"
        try:
            response = (self.session or requests).post(url, data=form, headers=self._headers(),
                                                       timeout=timeout, allow_redirects=False)
        except requests.exceptions.Timeout:
            raise ServiceError(f"token service {url}: no answer within {timeout:g} s") from None
        except requests.exceptions.RequestException as exc:
            from cacheorch.net import describe
            raise ServiceError(f"cannot reach the token service {url}: "
                               f"{self._clean(describe(exc, urlsplit(url).hostname))}") from None
        try:
            data = loads(response.content)
        except ValueError:
            data = None
        error = data.get("error") if isinstance(data, dict) else None
        if isinstance(error, dict):
            message = self._clean(" ".join(
                [str(error.get("message") or "")] + [str(d) for d in error.get("details") or []]
            ).strip() or "no message")
            raise AuthError(f"token service {url} refused {ENV_USERNAME}/{ENV_PASSWORD} "
                            f"(ArcGIS error {error.get('code')}: {message})")
        if response.status_code in (401, 403):
            raise AuthError(f"token service {url} refused {ENV_USERNAME}/{ENV_PASSWORD} "
                            f"(HTTP {response.status_code})")
        if response.status_code >= 300:
            raise ServiceError(f"token service {url}: HTTP {response.status_code} {response.reason}")
        token = data.get("token") if isinstance(data, dict) else None
        if not isinstance(token, str) or not token:
            raise ServiceError(f"token service {url} answered no token")
        expires = data.get("expires")
        when = float(expires) / 1000.0 if isinstance(expires, (int, float)) and \
            not isinstance(expires, bool) else None
        if when is not None:
            log.info("new token for %s, valid %.0f s", self.username, when - time.time())
        return IssuedToken(token, when)

    def _clean(self, text: str) -> str:
        return text.replace(self._password, "***") if self._password else text

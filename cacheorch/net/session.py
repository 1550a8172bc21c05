"""The requests side of :mod:`cacheorch.net`: a session that asks :class:`NetworkSettings` only.

requests would otherwise read ``REQUESTS_CA_BUNDLE`` (not ``SSL_CERT_FILE``), trust certifi
rather than the system store, and decide proxies with its own ``NO_PROXY`` rules; the tile
engine would decide differently. Here the session ignores the environment (``trust_env``
off) and its adapter takes the proxy, the SSL context and the timeouts from the settings, whatever
a caller passes, so no request can escape them.
"""
from __future__ import annotations

from typing import Any
from urllib.parse import urljoin, urlsplit

import requests
from requests.adapters import HTTPAdapter

from cacheorch.net import NetworkSettings

__all__ = ["make_session", "NetworkAdapter", "NetworkSession"]


class NonHttpRedirect(requests.exceptions.InvalidSchema):
    """A server redirected to a URL that is not http(s) (``ftp:``, ``file:``, ``javascript:``)."""


class NetworkSession(requests.Session):
    """A session whose redirects must stay on http(s), failing that request with a reason."""

    def get_redirect_target(self, resp: requests.Response) -> str | None:
        target = super().get_redirect_target(resp)
        if target is None:
            return None
        absolute = urljoin(resp.url, target)
        scheme = urlsplit(absolute).scheme.lower()
        if scheme not in ("http", "https"):
            resp.close()
            raise NonHttpRedirect(f"redirected to a non-HTTP URL ({scheme or 'no scheme'}:), "
                                  "not followed")
        return target


class NetworkAdapter(HTTPAdapter):
    """Sends every request with the settings' proxy choice, trust store and timeouts."""

    def __init__(self, settings: NetworkSettings, **kw: Any) -> None:
        self.settings = settings
        super().__init__(**kw)

    def init_poolmanager(self, connections: int, maxsize: int, block: bool = False,
                         **pool_kwargs: Any) -> None:
        pool_kwargs["ssl_context"] = self.settings.ssl_context("requests")
        super().init_poolmanager(connections, maxsize, block, **pool_kwargs)

    def proxy_manager_for(self, proxy: str, **proxy_kwargs: Any) -> Any:
        context = self.settings.ssl_context("requests")
        proxy_kwargs.setdefault("ssl_context", context)
        if proxy.lower().startswith("https://"):
            proxy_kwargs.setdefault("proxy_ssl_context", context)
        return super().proxy_manager_for(proxy, **proxy_kwargs)

    def build_connection_pool_key_attributes(self, request: Any, verify: Any, cert: Any = None
                                             ) -> tuple[dict[str, Any], dict[str, Any]]:
        host, pool = super().build_connection_pool_key_attributes(request, True, cert)
        pool.pop("ca_certs", None)
        pool.pop("ca_cert_dir", None)
        pool["ssl_context"] = self.settings.ssl_context("requests")
        return host, pool

    def cert_verify(self, conn: Any, url: str, verify: Any, cert: Any) -> None:
        # the SSL context carries the trust store; requests would add certifi's on top
        conn.cert_reqs = "CERT_REQUIRED"
        conn.ca_certs = None
        conn.ca_cert_dir = None

    def send(self, request: requests.PreparedRequest, stream: bool = False, timeout: Any = None,
             verify: Any = True, cert: Any = None, proxies: Any = None) -> requests.Response:
        proxy = self.settings.proxy_for(request.url or "")
        scheme = urlsplit(request.url or "").scheme.lower()
        # the proxy URL keeps its user:password; requests sends it as Proxy-Authorization
        chosen = {scheme: proxy.url} if proxy is not None else {}
        # one timeout setting: a caller's own value (an old ``timeout=30``) is not a second one
        return super().send(request, stream=stream, timeout=self.settings.timeouts,
                            verify=True, cert=cert, proxies=chosen)


def make_session(settings: NetworkSettings, headers: dict[str, str]) -> requests.Session:
    """A session for service JSON, tokens, jobs and downloads, configured by ``settings`` only."""
    session = NetworkSession()
    session.trust_env = False
    session.headers.update(headers)
    adapter = NetworkAdapter(settings)
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    return session

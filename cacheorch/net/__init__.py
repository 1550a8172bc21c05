"""One network configuration for everything cacheorch puts on the wire.

Why one object: service JSON, tokens, tilemaps, export jobs and downloads go through requests,
tiles through the asyncio engine (:mod:`cacheorch.fetch`, chosen by benchmark). When each client
reads its own CA variable and its own proxy rules, a site behind a corporate CA or proxy works for
one and fails for the other. :class:`NetworkSettings` is built once per command from flags, the
``[cacheorch]`` section of the config and the environment, and both clients take from it:

- the trust store (:meth:`NetworkSettings.ssl_context`): ``--ca-bundle`` / ``ca_bundle``, else
  ``SSL_CERT_FILE`` and ``REQUESTS_CA_BUNDLE`` (both, when both are set), else the system's;
- the proxy decision (:meth:`NetworkSettings.proxy_for`): ``http://`` and ``https://`` proxies,
  ``NO_PROXY`` with hosts, domains, CIDR ranges and ``*``;
- the timeouts: connect, and read (requests: between bytes; the tile engine: the whole answer).

:func:`describe` turns the exceptions of either client (ssl, socket, urllib3, requests) into the
words a user can act on ("certificate verify failed: self-signed certificate for 127.0.0.1").
"""
from __future__ import annotations

import functools
import http.client
import ipaddress
import os
import socket
import ssl
from base64 import b64encode
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from urllib.parse import unquote, urlsplit

from cacheorch.errors import ConfigError, UsageError

__all__ = ["NetworkSettings", "Proxy", "ProxyNotSupportedError", "describe", "tls_words", "os_words",
           "CA_ENV", "DEFAULT_CONNECT_TIMEOUT", "DEFAULT_READ_TIMEOUT", "bypasses_proxy"]

#: The environment variables naming a CA bundle, in the order they are read (all are loaded).
CA_ENV = ("SSL_CERT_FILE", "REQUESTS_CA_BUNDLE")
#: A host that does not accept a connection within this is down or filtered; fail fast.
DEFAULT_CONNECT_TIMEOUT = 10.0
#: A server that sends nothing for this long (requests), or has not answered a tile in full
#: (tile engine), is treated as gone; the request is retried.
DEFAULT_READ_TIMEOUT = 30.0


class ProxyNotSupportedError(UsageError):
    """A proxy URL cacheorch cannot use (SOCKS, or no host): bad input, exit 2."""


@dataclass(frozen=True)
class Proxy:
    """A forward proxy: ``http://`` (plain) or ``https://`` (TLS to the proxy itself)."""

    url: str
    host: str
    port: int
    tls: bool
    #: ``Proxy-Authorization`` value (Basic), or None.
    authorization: str | None = None

    @classmethod
    def parse(cls, text: str, where: str) -> Proxy:
        """``text`` as a proxy; :class:`ProxyNotSupportedError` names ``where`` it came from."""
        value = text.strip()
        parts = urlsplit(value if "://" in value else "http://" + value)
        scheme = parts.scheme.lower()
        if scheme.startswith("socks"):
            raise ProxyNotSupportedError(f"{where}: SOCKS proxies are not supported "
                                         f"({scheme}://); use an http:// or https:// proxy")
        if scheme not in ("http", "https") or not parts.hostname:
            raise ProxyNotSupportedError(f"{where}: {_hide_password(value)!r} is not an "
                                         "http:// or https:// proxy URL")
        try:
            port = parts.port or (443 if scheme == "https" else 80)
        except ValueError:
            raise ProxyNotSupportedError(f"{where}: bad port in {_hide_password(value)!r}") from None
        auth = None
        if parts.username is not None:
            creds = f"{unquote(parts.username)}:{unquote(parts.password or '')}".encode()
            auth = "Basic " + b64encode(creds).decode("ascii")
        return cls(f"{scheme}://{parts.netloc}", parts.hostname, port, scheme == "https", auth)

    def __repr__(self) -> str:  # never show the proxy's password
        return f"Proxy({_hide_password(self.url)!r})"


def _hide_password(url: str) -> str:
    parts = urlsplit(url)
    if parts.password is None:
        return url
    return url.replace(f":{parts.password}@", ":***@", 1)


def _split(value: str | None) -> tuple[str, ...]:
    return tuple(p.strip() for p in (value or "").replace(" ", ",").split(",") if p.strip())


def bypasses_proxy(host: str, port: int, no_proxy: tuple[str, ...]) -> bool:
    """Whether ``NO_PROXY`` entries send ``host:port`` direct.

    Entries: ``*`` (every host), a host or domain (``example.com`` and ``.example.com`` both
    match the domain and its subdomains, as curl and requests read them), an IP address, a CIDR
    range (``10.0.0.0/8``, matched against IP hosts), each optionally with ``:port``.
    """
    host = host.strip("[]").lower().rstrip(".")
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        address = None
    for raw in no_proxy:
        entry = raw.lower()
        if entry == "*":
            return True
        want_port = None
        if entry.startswith("["):  # [::1] or [::1]:8080
            inner, _, rest = entry[1:].partition("]")
            entry, want_port = inner, rest[1:] if rest.startswith(":") else None
        elif entry.count(":") == 1 and "/" not in entry:
            entry, want_port = entry.split(":")
        if want_port is not None and want_port != str(port):
            continue
        if "/" in entry:
            try:
                network = ipaddress.ip_network(entry, strict=False)
            except ValueError:
                continue
            if address is not None and address.version == network.version and address in network:
                return True
            continue
        if address is not None:
            try:
                if ipaddress.ip_address(entry) == address:
                    return True
            except ValueError:
                pass
            continue
        domain = entry.lstrip("*").lstrip(".")
        if domain and (host == domain or host.endswith("." + domain)):
            return True
    return False


@dataclass(frozen=True)
class NetworkSettings:
    """CA bundle, proxies, ``NO_PROXY`` and timeouts for every request of one command.

    Picklable (the dask executor ships it to workers); the SSL context is built on first use.

    :param ca_bundles: PEM files to trust instead of the system store, with where each came from.
    :param http_proxy: proxy for ``http://`` URLs, and where it came from.
    :param https_proxy: proxy for ``https://`` URLs (tunnelled with CONNECT), and where from.
    """

    ca_bundles: tuple[tuple[str, str], ...] = ()
    http_proxy: tuple[str, str] | None = None
    https_proxy: tuple[str, str] | None = None
    no_proxy: tuple[str, ...] = ()
    connect_timeout: float = DEFAULT_CONNECT_TIMEOUT
    read_timeout: float = DEFAULT_READ_TIMEOUT
    _proxies: dict[str, Proxy | None] = field(default_factory=dict, init=False, compare=False,
                                              repr=False)

    @classmethod
    def build(cls, *, ca_bundle: str | None = None, connect_timeout: float | None = None,
              read_timeout: float | None = None, config: Mapping[str, str] | None = None,
              environ: Mapping[str, str] | None = None, trust_env: bool = True,
              config_where: str = "[cacheorch]") -> NetworkSettings:
        """Flags win over the config's ``[cacheorch]`` keys, which win over the environment.

        Config keys: ``ca_bundle``, ``http_proxy``, ``https_proxy``, ``no_proxy``,
        ``connect_timeout``, ``read_timeout``. ``trust_env=False`` ignores the environment.
        """
        env: Mapping[str, str] = (os.environ if environ is None else environ) if trust_env else {}
        conf = config or {}

        def env_value(*names: str) -> tuple[str, str] | None:
            for name in names:  # lower case first, as curl and requests read them
                for variant in (name.lower(), name.upper()):
                    if env.get(variant):
                        return env[variant], variant
            return None

        def setting(key: str, *env_names: str) -> tuple[str, str] | None:
            if conf.get(key):
                return conf[key], f"{config_where} {key}"
            return env_value(*env_names) if env_names else None

        if ca_bundle:
            bundles: tuple[tuple[str, str], ...] = ((ca_bundle, "--ca-bundle"),)
        elif conf.get("ca_bundle"):
            bundles = ((conf["ca_bundle"], f"{config_where} ca_bundle"),)
        else:
            seen: dict[str, str] = {}
            for name in CA_ENV:
                if env.get(name) and env[name] not in seen:
                    seen[env[name]] = name
            bundles = tuple(seen.items())
        no_proxy = setting("no_proxy", "no_proxy")
        return cls(
            ca_bundles=bundles,
            http_proxy=setting("http_proxy", "http_proxy", "all_proxy"),
            https_proxy=setting("https_proxy", "https_proxy", "all_proxy"),
            no_proxy=_split(no_proxy[0]) if no_proxy else (),
            connect_timeout=_seconds(connect_timeout, conf, "connect_timeout", config_where,
                                     DEFAULT_CONNECT_TIMEOUT),
            read_timeout=_seconds(read_timeout, conf, "read_timeout", config_where,
                                  DEFAULT_READ_TIMEOUT))

    @property
    def timeouts(self) -> tuple[float, float]:
        """``(connect, read)`` as requests takes it."""
        return self.connect_timeout, self.read_timeout

    def proxy_for(self, url: str) -> Proxy | None:
        """The proxy ``url`` goes through, or None for a direct connection.

        The one decision both the requests session and the tile engine make.
        """
        parts = urlsplit(url)
        scheme = parts.scheme.lower()
        configured = self.https_proxy if scheme == "https" else \
            self.http_proxy if scheme == "http" else None
        if configured is None or not parts.hostname:
            return None
        try:
            port = parts.port or (443 if scheme == "https" else 80)
        except ValueError:
            return None
        if bypasses_proxy(parts.hostname, port, self.no_proxy):
            return None
        cache = self._proxies
        if scheme not in cache:
            cache[scheme] = Proxy.parse(*configured)
        return cache[scheme]

    def without_proxies(self) -> NetworkSettings:
        """The same settings, every connection direct."""
        return replace(self, http_proxy=None, https_proxy=None, no_proxy=())

    def with_timeout(self, seconds: float) -> NetworkSettings:
        """The same settings with one timeout for connecting and reading (a script's ``timeout=``)."""
        return replace(self, connect_timeout=seconds, read_timeout=seconds)

    def ssl_context(self, client: str = "tiles") -> ssl.SSLContext:
        """The trust store of every TLS connection (servers and ``https://`` proxies).

        One context per ``client`` and trust store, built the same way from the same files: urllib3
        sets options on the context it is given (verify mode, ALPN), which must not reach the
        tile engine's.
        """
        return _context(self.ca_bundles, client)

    def __getstate__(self) -> dict[str, object]:
        state = dict(self.__dict__)
        state["_proxies"] = {}
        return state

    def __setstate__(self, state: dict[str, object]) -> None:
        self.__dict__.update(state)


def _seconds(flag: float | None, conf: Mapping[str, str], key: str, where: str,
             default: float) -> float:
    if flag is not None:
        value, shown = flag, f"--{key.replace('_', '-')}"
    elif conf.get(key):
        shown = f"{where} {key}"
        try:
            value = float(conf[key])
        except ValueError:
            raise ConfigError(f"{shown}: {conf[key]!r} is not a number of seconds") from None
    else:
        return default
    if not value > 0:
        raise ConfigError(f"{shown}: a timeout must be above 0 seconds")
    return float(value)


@functools.lru_cache(maxsize=16)
def _context(bundles: tuple[tuple[str, str], ...], client: str) -> ssl.SSLContext:
    """One context per trust store: the given bundles only, or the system's.

    A system store with no CA at all (some minimal containers, python.org macOS builds) falls
    back to certifi's, which requests would have used.
    """
    if not bundles:
        ctx = ssl.create_default_context()
        if not ctx.cert_store_stats().get("x509_ca"):
            try:
                import certifi
                ctx.load_verify_locations(certifi.where())
            except (ImportError, OSError):
                pass
        return ctx
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # verifies certificates and host names
    for path, where in bundles:
        try:
            if os.path.isdir(path):
                ctx.load_verify_locations(capath=path)
            else:
                ctx.load_verify_locations(cafile=path)
        except FileNotFoundError:
            raise ConfigError(f"{where} {path}: no such CA bundle") from None
        except (ssl.SSLError, OSError) as exc:
            raise ConfigError(f"{where} {path}: not a PEM CA bundle "
                              f"({tls_reason(exc) if isinstance(exc, ssl.SSLError) else exc})"
                              ) from None
    return ctx


# -- words for errors ---------------------------------------------------------------------

def tls_reason(exc: ssl.SSLError) -> str:
    """``[SSL: WRONG_VERSION_NUMBER] wrong version number (_ssl.c:1006)`` → "wrong version number"."""
    if isinstance(exc, ssl.SSLCertVerificationError) and exc.verify_message:
        return exc.verify_message
    reason = getattr(exc, "reason", None)
    if reason:
        return str(reason).lower().replace("_", " ")
    text = str(exc.args[1] if len(exc.args) > 1 else exc)
    return text.split("] ", 1)[-1].split(" (_ssl.c", 1)[0].strip() or type(exc).__name__


def os_words(exc: OSError) -> str:
    """A socket error in words: "connection refused", not "[Errno 111] Connect call failed"."""
    if isinstance(exc, socket.gaierror):
        return "host name not found"
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused"
    if exc.errno:
        return os.strerror(exc.errno).lower()
    return (exc.strerror or str(exc) or type(exc).__name__).lower()


def tls_words(exc: ssl.SSLError, host: str) -> str:
    """A TLS failure with ``host`` in words."""
    if isinstance(exc, ssl.SSLCertVerificationError):
        return f"certificate verify failed: {tls_reason(exc)} for {host}"
    return f"TLS handshake with {host} failed: {tls_reason(exc)}"


def _chain(exc: BaseException) -> list[BaseException]:
    """``exc`` and what it wraps: causes, contexts, urllib3's ``reason``, requests' args."""
    out: list[BaseException] = []
    todo = [exc]
    while todo and len(out) < 20:
        e = todo.pop(0)
        if e in out:
            continue
        out.append(e)
        for inner in (getattr(e, "reason", None), e.__cause__, e.__context__,
                      *[a for a in getattr(e, "args", ()) if isinstance(a, BaseException)]):
            if isinstance(inner, BaseException):
                todo.append(inner)
    return out


def describe(exc: BaseException, host: str | None = None, proxy: Proxy | None = None) -> str:
    """Why a request failed, in words, from any client's exception (never a class name alone).

    :param host: the host talked to, named in TLS failures.
    :param proxy: the proxy the request went through, if any, named when it is the one failing.
    """
    chain = _chain(exc)
    where = host or "the server"
    names = {type(e).__name__ for e in chain}
    for e in chain:
        if isinstance(e, ProxyNotSupportedError):
            return str(e)
    via_proxy = "ProxyError" in names
    for e in chain:
        if isinstance(e, ssl.SSLError):
            return ("proxy " if via_proxy and proxy is not None and proxy.tls else "") + \
                tls_words(e, proxy.host if via_proxy and proxy is not None else where)
    for e in chain:
        text = str(e)
        if isinstance(e, http.client.BadStatusLine) and not isinstance(
                e, http.client.RemoteDisconnected):
            line = str(e.args[0] if e.args else "").strip()[:60]
            return f"not an HTTP response: {line!r}" if line else "not an HTTP response"
        if isinstance(e, ConnectionRefusedError) or "Connection refused" in text:
            if via_proxy and proxy is not None:
                return f"cannot connect to proxy {proxy.host}:{proxy.port}: connection refused"
            return "connection refused"
        if isinstance(e, ConnectionResetError):
            return "connection reset by the server"
        if "RemoteDisconnected" in type(e).__name__ or "without response" in text:
            return "the server closed the connection without answering"
        if "Tunnel connection failed" in text:
            why = text.split("Tunnel connection failed:", 1)[1].strip(" ')\"")
            to = f" to {host}" if host else ""
            return f"proxy refused CONNECT{to}: HTTP {why}"
    if names & {"ConnectTimeout", "ConnectTimeoutError"}:
        return "no connection within the connect timeout"
    if names & {"ReadTimeout", "ReadTimeoutError", "TimeoutError"}:
        return "no answer within the read timeout"
    for e in chain:
        if isinstance(e, OSError) and (e.errno or e.strerror):
            return os_words(e)
    if "InvalidSchema" in names or "InvalidURL" in names:
        return str(exc)
    text = " ".join(str(exc).split())
    return text or type(exc).__name__

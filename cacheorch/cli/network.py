"""``--ca-bundle``, ``--connect-timeout``, ``--read-timeout``: the network flags of every command
that talks to a service, turned with the config and the environment into one
:class:`~cacheorch.net.NetworkSettings`."""
from __future__ import annotations

import functools
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import click

from cacheorch.net import NetworkSettings

if TYPE_CHECKING:
    from cacheorch.cli import App

__all__ = ["network_options", "network_settings"]

_META = "cacheorch.network"


def network_options(func: Callable[..., Any]) -> Callable[..., Any]:
    """Add the network flags to a command; :func:`network_settings` reads them back."""
    @functools.wraps(func)
    def wrapper(*args: Any, ca_bundle: str | None = None, connect_timeout: float | None = None,
                read_timeout: float | None = None, **kw: Any) -> Any:
        click.get_current_context().meta[_META] = {
            "ca_bundle": ca_bundle, "connect_timeout": connect_timeout,
            "read_timeout": read_timeout}
        return func(*args, **kw)

    options = [
        click.option("--ca-bundle", type=click.Path(exists=True), metavar="PEM",
                     help="CA certificates to trust for every request, instead of the system's "
                          "(default: [cacheorch] ca_bundle, $SSL_CERT_FILE, $REQUESTS_CA_BUNDLE)."),
        click.option("--connect-timeout", type=click.FloatRange(min=0, min_open=True),
                     metavar="S", help="Seconds to connect (default 10)."),
        click.option("--read-timeout", type=click.FloatRange(min=0, min_open=True), metavar="S",
                     help="Seconds to wait for an answer (default 30; a tile: in full)."),
    ]
    for option in reversed(options):
        wrapper = option(wrapper)
    return wrapper


def network_settings(app: App) -> NetworkSettings:
    """The command's settings: its flags, then ``[cacheorch]`` keys, then the environment."""
    ctx = click.get_current_context(silent=True)
    flags = ctx.meta.get(_META, {}) if ctx is not None else {}
    config = dict(app.config.main)
    if config.get("ca_bundle"):  # relative to the config file, as every path in it
        config["ca_bundle"] = app.config.resolve_path(config["ca_bundle"])
    return NetworkSettings.build(**flags, config=config, config_where=app.config.where("cacheorch"))

"""The ``defaults`` scale source: the standard Web Mercator series, or a scale list from the config."""
from __future__ import annotations

from dataclasses import dataclass, replace

from cacheorch import hookimpl
from cacheorch.connection import Connection
from cacheorch.errors import ConfigError
from cacheorch.interfaces import ScaleSource, Service
from cacheorch.tiling import INCHES_PER_METRE, LevelOfDetail, web_mercator_scheme

__all__ = ["DefaultsScaleSource"]


class DefaultsScaleSource(ScaleSource):
    """The standard Web Mercator levels 0-23, or scales listed in the config.

    Example ``[service:NAME]`` section::

        url = defaults
        source = defaults
        scales = 591657527.591555;295828763.795777;147914381.897889
    """

    name = "defaults"

    @dataclass
    class Options:
        #: ';'-separated scales (levels numbered from 0); empty: levels 0-23 computed from level 0.
        scales: str = ""
        tile_size: int = 256
        dpi: int = 96
        max_level: int = 23

    @classmethod
    def accepts(cls, location: str) -> bool:
        return location.strip().lower() == "defaults"

    def read(self, location: str, connection: Connection) -> Service:
        opts = self.options
        scheme = web_mercator_scheme(max_level=opts.max_level, tile_size=opts.tile_size, dpi=opts.dpi)
        if opts.scales.strip():
            scales = []
            for part in opts.scales.replace(",", ";").split(";"):
                if not part.strip():
                    continue
                try:
                    scales.append(float(part))
                except ValueError:
                    raise ConfigError(f"defaults: scales: {part.strip()!r} is not a number") from None
            if sorted(scales, reverse=True) != scales or len(set(scales)) != len(scales):
                raise ConfigError("defaults: scales must go from small scale to large, each once")
            lods = tuple(LevelOfDetail(i, s, s / (opts.dpi * INCHES_PER_METRE))
                         for i, s in enumerate(scales))
            scheme = replace(scheme, lods=lods, _by_level={})
        return Service(location="defaults", scheme=scheme, kind="defaults", name="defaults")


@hookimpl
def cacheorch_register_scale_sources() -> list[type[ScaleSource]]:
    return [DefaultsScaleSource]

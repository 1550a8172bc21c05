"""Decoding a vector tile with a decoder cacheorch did not write: what ``verify`` trusts.

``mapbox-vector-tile`` (PyPI, the ``vector`` extra) when installed, else GDAL's MVT driver through
pyogrio (the ``gdal`` extra). cacheorch's own scanner (:mod:`cacheorch.vector.mvt`) is never the
judge of its own outputs.
"""
from __future__ import annotations

import io

from cacheorch.errors import FormatError
from cacheorch.vector.mvt import plain_form

__all__ = ["decode_tile", "decoder_name"]


def decoder_name() -> str:
    """Which independent decoder is available; FormatError when none is."""
    try:
        import mapbox_vector_tile  # noqa: F401
        return "mapbox-vector-tile"
    except ImportError:
        pass
    try:
        import pyogrio
    except ImportError:
        raise FormatError("no vector tile decoder: pip install 'cacheorch[vector]' "
                          "(mapbox-vector-tile) or 'cacheorch[gdal]'") from None
    if "MVT" not in pyogrio.list_drivers():
        raise FormatError("GDAL (pyogrio) has no MVT driver: pip install 'cacheorch[vector]'")
    return "GDAL MVT"


def decode_tile(data: bytes) -> dict[str, int]:
    """Layer name → feature count of one tile (gzip or not); ValueError saying why it fails."""
    raw = plain_form(data)
    if decoder_name() == "mapbox-vector-tile":
        import mapbox_vector_tile
        try:
            layers = mapbox_vector_tile.decode(raw, default_options={"y_coord_down": True})
        except Exception as exc:  # the decoder raises protobuf's and its own errors
            raise ValueError(f"{type(exc).__name__}: {exc}".rstrip(": ")) from None
        return {name: len(layer.get("features") or []) for name, layer in layers.items()}
    return _gdal_decode(raw)


def _gdal_decode(raw: bytes) -> dict[str, int]:
    import pyogrio
    import pyogrio.errors

    if not raw:
        return {}
    try:
        out = {}
        for layer, _ in pyogrio.list_layers(io.BytesIO(raw)):
            info = pyogrio.read_info(io.BytesIO(raw), layer=layer)
            out[str(layer)] = int(info.get("features") or 0)
        return out
    except (pyogrio.errors.DataSourceError, pyogrio.errors.DataLayerError, OSError) as exc:
        raise ValueError(f"GDAL: {exc}".splitlines()[0]) from None

"""WMTS 1.0.0 at ArcGIS Server's own paths, so QGIS, ArcGIS, OpenLayers and GDAL add a served
cache as a WMTS layer.

* ``.../MapServer/WMTS/1.0.0/WMTSCapabilities.xml`` (RESTful) and
  ``.../MapServer/WMTS?service=WMTS&request=GetCapabilities`` (KVP);
* tiles at ``.../MapServer/WMTS/tile/1.0.0/{layer}/{style}/{TileMatrixSet}/{TileMatrix}/{TileRow}/{TileCol}``
  and by KVP ``request=GetTile``.

Two tile matrix sets, as ArcGIS names them: ``default028mm``, the cache's own scheme in its own
spatial reference (one TileMatrix per level that holds tiles, identified by the level ID, scale
denominators at OGC's 0.28 mm pixel), and ``GoogleMapsCompatible`` when the scheme is the standard
Web Mercator grid (TileMatrix = zoom). Only levels holding tiles and the cache's one format are
advertised. Corners are written in the CRS's own axis order (northing first for EPSG:4326...).
"""
from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs
from xml.sax.saxutils import escape, quoteattr

if TYPE_CHECKING:
    from cacheorch.tiling import TilingScheme

__all__ = ["WmtsError", "Wmts", "OWN_SET", "GOOGLE_SET"]

OWN_SET = "default028mm"
GOOGLE_SET = "GoogleMapsCompatible"
#: OGC's standardized rendering pixel size (m), and metres per degree on the WGS84 semi-major axis.
_PIXEL = 0.00028
_METRES_PER_DEGREE = 6378137.0 * math.pi / 180
_MIME = {"PNG": "image/png", "PNG8": "image/png", "PNG24": "image/png", "PNG32": "image/png",
         "JPEG": "image/jpeg", "JPG": "image/jpeg", "MIXED": "image/jpeg"}


class WmtsError(ValueError):
    """A request WMTS cannot answer (HTTP 400/404, an OWS exception report)."""

    def __init__(self, message: str, code: str = "InvalidParameterValue", status: int = 400) -> None:
        super().__init__(message)
        self.code, self.status = code, status

    def report(self) -> bytes:
        return ('<?xml version="1.0" encoding="UTF-8"?>\n'
                '<ExceptionReport xmlns="http://www.opengis.net/ows/1.1" version="1.1.0">'
                f'<Exception exceptionCode={quoteattr(self.code)}><ExceptionText>'
                f'{escape(str(self))}</ExceptionText></Exception></ExceptionReport>').encode()


def _crs(scheme: TilingScheme) -> tuple[str, bool, float]:
    """(CRS URN, northing first?, metres per CRS unit) of the scheme's spatial reference."""
    sr = scheme.spatial_reference
    code = sr.epsg
    if code is None:
        raise WmtsError("WMTS needs a spatial reference with a wkid; this cache has only a WKT",
                        "OperationNotSupported", 404)
    urn = f"urn:ogc:def:crs:EPSG::{code}" if code < 100000 else f"urn:ogc:def:crs:ESRI::{code}"
    try:
        import pyproj
        crs = pyproj.CRS.from_user_input(sr.crs_input())
        axis = crs.axis_info[0]
        northing_first = axis.direction.lower() in ("north", "south")
        per_unit = _METRES_PER_DEGREE if crs.is_geographic else axis.unit_conversion_factor
    except Exception:  # an unknown code: ArcGIS's own units, easting first
        northing_first, per_unit = False, scheme.meters_per_unit
    return urn, northing_first, per_unit


class Wmts:
    """Capabilities (rendered per base URL) and tile lookups for one served cache."""

    def __init__(self, name: str, scheme: TilingScheme, tiled_levels: list[int],
                 zooms: dict[int, int], extent: dict[str, Any] | None) -> None:
        self.name, self.scheme = name, scheme
        self.levels = [lv for lv in sorted(tiled_levels) if lv in scheme.levels]
        self.zooms = {z: lv for z, lv in sorted(zooms.items()) if lv in self.levels}
        self.extent = extent
        self.mime = _MIME.get(scheme.tile_format.upper(), "image/png")
        self.urn, self.northing_first, self.per_unit = _crs(scheme)

    # -- tiles ----------------------------------------------------------------------------------

    def level_of(self, matrix_set: str, matrix: str) -> int:
        """The cache level behind (TileMatrixSet, TileMatrix); WmtsError if there is none."""
        try:
            number = int(matrix.rsplit(":", 1)[-1])
        except ValueError:
            number = None
        if matrix_set == OWN_SET and number in self.levels:
            return number  # type: ignore[return-value]
        if matrix_set == GOOGLE_SET and number in self.zooms:
            return self.zooms[number]  # type: ignore[index]
        if matrix_set not in (OWN_SET, GOOGLE_SET) or (matrix_set == GOOGLE_SET and not self.zooms):
            raise WmtsError(f"unknown TileMatrixSet {matrix_set!r}", "InvalidParameterValue", 400)
        raise WmtsError(f"unknown TileMatrix {matrix!r} in {matrix_set}", "InvalidParameterValue", 400)

    def tile_from_path(self, rest: str) -> tuple[int, int, int]:
        """``{layer}/{style}/{set}/{matrix}/{row}/{col}[.ext]`` → (level, row, col)."""
        parts = rest.split("/")
        if len(parts) != 6:
            raise WmtsError("WMTS tile path must be tile/1.0.0/{layer}/{style}/{TileMatrixSet}/"
                            "{TileMatrix}/{TileRow}/{TileCol}", "MissingParameterValue", 404)
        layer, _style, matrix_set, matrix, row, col = parts
        return self._tile(layer, matrix_set, matrix, row, col.split(".")[0])

    def tile_from_query(self, params: dict[str, str]) -> tuple[int, int, int]:
        missing = [k for k in ("layer", "tilematrixset", "tilematrix", "tilerow", "tilecol") if k not in params]
        if missing:
            raise WmtsError(f"GetTile needs {', '.join(missing)}", "MissingParameterValue")
        return self._tile(params["layer"], params["tilematrixset"], params["tilematrix"],
                          params["tilerow"], params["tilecol"])

    def _tile(self, layer: str, matrix_set: str, matrix: str, row: str, col: str) -> tuple[int, int, int]:
        if layer != self.name:
            raise WmtsError(f"unknown layer {layer!r}; this server has {self.name!r}")
        level = self.level_of(matrix_set, matrix)
        if not (row.isascii() and row.isdigit() and col.isascii() and col.isdigit()):
            raise WmtsError("TileRow and TileCol must be whole numbers", "InvalidParameterValue")
        return level, int(row), int(col)

    # -- capabilities ---------------------------------------------------------------------------

    def _corner(self, x: float, y: float) -> str:
        return f"{y!r} {x!r}" if self.northing_first else f"{x!r} {y!r}"

    def _limits(self, level: int) -> tuple[int, int, int, int] | None:
        if self.extent is None:
            return None
        bounds = (self.extent["xmin"], self.extent["ymin"], self.extent["xmax"], self.extent["ymax"])
        return self.scheme.tile_range(level, bounds)

    def _matrix(self, identifier: str, level: int, scale: float, left: float, top: float) -> str:
        scheme = self.scheme
        limits = self._limits(level)
        size = scheme.grid_size(level)
        if size is None:  # an unbounded grid: as far as the data goes
            size = (limits[2] + 1, limits[3] + 1) if limits else (1, 1)
        return (f"<TileMatrix><ows:Identifier>{identifier}</ows:Identifier>"
                f"<ScaleDenominator>{scale!r}</ScaleDenominator>"
                f"<TopLeftCorner>{self._corner(left, top)}</TopLeftCorner>"
                f"<TileWidth>{scheme.tile_cols}</TileWidth><TileHeight>{scheme.tile_rows}</TileHeight>"
                f"<MatrixWidth>{size[1]}</MatrixWidth><MatrixHeight>{size[0]}</MatrixHeight></TileMatrix>")

    def _set_link(self, matrix_set: str, matrices: list[tuple[str, int]]) -> str:
        limits = []
        for identifier, level in matrices:
            box = self._limits(level)
            if box is not None:
                limits.append(f"<TileMatrixLimits><TileMatrix>{identifier}</TileMatrix>"
                              f"<MinTileRow>{box[0]}</MinTileRow><MaxTileRow>{box[2]}</MaxTileRow>"
                              f"<MinTileCol>{box[1]}</MinTileCol><MaxTileCol>{box[3]}</MaxTileCol>"
                              "</TileMatrixLimits>")
        inner = f"<TileMatrixSetLimits>{''.join(limits)}</TileMatrixSetLimits>" if limits else ""
        return f"<TileMatrixSetLink><TileMatrixSet>{matrix_set}</TileMatrixSet>{inner}</TileMatrixSetLink>"

    def _wgs84_box(self) -> str:
        if self.extent is None:
            return ""
        try:
            import pyproj
            to_wgs84 = pyproj.Transformer.from_crs(self.scheme.spatial_reference.crs_input(), "OGC:CRS84",
                                                   always_xy=True)
            west, south, east, north = to_wgs84.transform_bounds(
                self.extent["xmin"], self.extent["ymin"], self.extent["xmax"], self.extent["ymax"])
        except Exception:
            return ""
        if not all(math.isfinite(v) for v in (west, south, east, north)):
            return ""
        return (f'<ows:WGS84BoundingBox crs="urn:ogc:def:crs:OGC:2:84"><ows:LowerCorner>{west!r} {south!r}'
                f"</ows:LowerCorner><ows:UpperCorner>{east!r} {north!r}</ows:UpperCorner></ows:WGS84BoundingBox>")

    def capabilities(self, service_url: str) -> bytes:
        """The capabilities document; ``service_url`` is the MapServer's absolute URL."""
        scheme = self.scheme
        wmts = f"{service_url}/WMTS"
        own = [(str(lv), lv) for lv in self.levels]
        google = [(str(z), lv) for z, lv in self.zooms.items()]
        links = self._set_link(OWN_SET, own) + (self._set_link(GOOGLE_SET, google) if google else "")
        box = ""
        if self.extent is not None:
            e = self.extent
            box = (f'<ows:BoundingBox crs="{self.urn}"><ows:LowerCorner>{self._corner(e["xmin"], e["ymin"])}'
                   f'</ows:LowerCorner><ows:UpperCorner>{self._corner(e["xmax"], e["ymax"])}'
                   "</ows:UpperCorner></ows:BoundingBox>")
        template = (f"{wmts}/tile/1.0.0/{self.name}/{{Style}}/{{TileMatrixSet}}/{{TileMatrix}}/"
                    "{TileRow}/{TileCol}")
        own_matrices = "".join(
            self._matrix(ident, lv, scheme.lod(lv).resolution * self.per_unit / _PIXEL,
                         scheme.origin_x, scheme.origin_y) for ident, lv in own)
        sets = (f"<TileMatrixSet><ows:Title>{escape(self.name)}</ows:Title>"
                f"<ows:Identifier>{OWN_SET}</ows:Identifier><ows:SupportedCRS>{self.urn}</ows:SupportedCRS>"
                f"{own_matrices}</TileMatrixSet>")
        if google:
            half = 20037508.3427892
            matrices = "".join(self._matrix(ident, lv, 559082264.0287178 / 2 ** int(ident), -half, half)
                               for ident, lv in google)
            sets += (f"<TileMatrixSet><ows:Title>GoogleMapsCompatible</ows:Title>"
                     f"<ows:Identifier>{GOOGLE_SET}</ows:Identifier>"
                     "<ows:SupportedCRS>urn:ogc:def:crs:EPSG::3857</ows:SupportedCRS>"
                     "<WellKnownScaleSet>urn:ogc:def:wkss:OGC:1.0:GoogleMapsCompatible</WellKnownScaleSet>"
                     f"{matrices}</TileMatrixSet>")

        def operation(name: str, rest: str, kvp: str) -> str:
            gets = "".join(
                f'<ows:Get xlink:href={quoteattr(href)}><ows:Constraint name="GetEncoding"><ows:AllowedValues>'
                f"<ows:Value>{enc}</ows:Value></ows:AllowedValues></ows:Constraint></ows:Get>"
                for href, enc in ((rest, "RESTful"), (kvp, "KVP")))
            return f'<ows:Operation name="{name}"><ows:DCP><ows:HTTP>{gets}</ows:HTTP></ows:DCP></ows:Operation>'

        caps_url = f"{wmts}/1.0.0/WMTSCapabilities.xml"
        title = escape(self.name)
        return (
            '<?xml version="1.0" encoding="UTF-8"?>\n'
            '<Capabilities xmlns="http://www.opengis.net/wmts/1.0" xmlns:ows="http://www.opengis.net/ows/1.1" '
            'xmlns:xlink="http://www.w3.org/1999/xlink" xmlns:gml="http://www.opengis.net/gml" version="1.0.0">'
            f"<ows:ServiceIdentification><ows:Title>{title}</ows:Title>"
            "<ows:ServiceType>OGC WMTS</ows:ServiceType>"
            "<ows:ServiceTypeVersion>1.0.0</ows:ServiceTypeVersion></ows:ServiceIdentification>"
            "<ows:OperationsMetadata>"
            + operation("GetCapabilities", caps_url, f"{wmts}?")
            + operation("GetTile", f"{wmts}/tile/1.0.0/", f"{wmts}?")
            + "</ows:OperationsMetadata><Contents>"
            f"<Layer><ows:Title>{title}</ows:Title>{self._wgs84_box()}{box}"
            f"<ows:Identifier>{title}</ows:Identifier>"
            '<Style isDefault="true"><ows:Title>Default Style</ows:Title><ows:Identifier>default</ows:Identifier>'
            f"</Style><Format>{self.mime}</Format>{links}"
            f'<ResourceURL format="{self.mime}" resourceType="tile" template={quoteattr(template)}/>'
            f"</Layer>{sets}</Contents>"
            f'<ServiceMetadataURL xlink:href={quoteattr(caps_url)}/></Capabilities>'
        ).encode()


def kvp(query: str) -> dict[str, str]:
    """Query parameters with lower-case names (OGC KVP names are case-insensitive)."""
    return {k.lower(): v[-1] for k, v in parse_qs(query, keep_blank_values=True).items()}

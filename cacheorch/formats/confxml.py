"""conf.xml (the tiling scheme of a cache folder) and conf.cdi (its data extent), read and written.

The writer produces the element tree ArcGIS writes (namespace ArcGIS/10.3, the version that
introduced Compact V2), so ArcGIS, GDAL's ESRIC driver, GeoWebCache and MapProxy all read it.
The reader is tolerant of what real files vary in (namespace version, missing CacheStorageInfo,
``Conf.xml`` spelling is the caller's business) and refuses DTDs, so a hostile file cannot expand
entities or reach the network.
"""
from __future__ import annotations

import logging
import math
import os
import re
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

from cacheorch.errors import FormatError
from cacheorch.tiling import Envelope, LevelOfDetail, SpatialReference, TilingScheme

__all__ = [
    "COMPACT_V2", "COMPACT_V1", "EXPLODED", "WEB_MERCATOR_WKT", "ConfInfo", "write_conf_xml",
    "write_conf_cdi", "read_conf_xml", "read_conf_xml_info", "read_conf_cdi", "conf_xml_bytes",
    "read_conf_xml_bytes", "read_conf_cdi_bytes",
    "conf_cdi_bytes", "spatial_reference_wkt", "units_of", "parse_xml",
]

log = logging.getLogger(__name__)

COMPACT_V2 = "esriMapCacheStorageModeCompactV2"
COMPACT_V1 = "esriMapCacheStorageModeCompact"
EXPLODED = "esriMapCacheStorageModeExploded"

#: The WKT ArcGIS writes for Web Mercator (wkid 102100 / 3857), as in Esri's and GDAL's samples.
WEB_MERCATOR_WKT = (
    'PROJCS["WGS_1984_Web_Mercator_Auxiliary_Sphere",GEOGCS["GCS_WGS_1984",DATUM["D_WGS_1984",'
    'SPHEROID["WGS_1984",6378137.0,298.257223563]],PRIMEM["Greenwich",0.0],'
    'UNIT["Degree",0.0174532925199433]],PROJECTION["Mercator_Auxiliary_Sphere"],'
    'PARAMETER["False_Easting",0.0],PARAMETER["False_Northing",0.0],'
    'PARAMETER["Central_Meridian",0.0],PARAMETER["Standard_Parallel_1",0.0],'
    'PARAMETER["Auxiliary_Sphere_Type",0.0],UNIT["Meter",1.0],AUTHORITY["EPSG",3857]]'
)

_NAMESPACE = "http://www.esri.com/schemas/ArcGIS/10.3"
_ROOT_ATTRS = {
    "xmlns:xsi": "http://www.w3.org/2001/XMLSchema-instance",
    "xmlns:xs": "http://www.w3.org/2001/XMLSchema",
    "xmlns:typens": _NAMESPACE,
}
_XML_DECL = '<?xml version="1.0" encoding="utf-8" ?>\n'
# Coordinate domains (XOrigin, YOrigin, XYScale, XYTolerance). Web Mercator: what ArcGIS 10.1+
# writes (also root.json falseX/falseY/xyUnits in Esri's Usa.tpkx). Others: ArcGIS's defaults for
# a coordinate system of unknown extent [unconfirmed for every system; only readers of the
# geometry domain care, and tile readers do not].
_DOMAIN_WEB_MERCATOR = ("-20037700", "-30241100", "148923141.92838538", "0.001")
_DOMAIN_PROJECTED = ("-450359962737.049", "-450359962737.049", "10000", "0.001")
_DOMAIN_GEOGRAPHIC = ("-400", "-400", "1000000000", "8.983152841195215e-09")
_DOCTYPE = re.compile(rb"<!\s*(DOCTYPE|ENTITY)", re.IGNORECASE)


class ConfInfo(NamedTuple):
    """What a conf.xml says beyond the grid: how tiles are stored."""

    scheme: TilingScheme
    storage_format: str
    packet_size: int


# -- writing ----------------------------------------------------------------------------------

def _num(value: float) -> str:
    """Shortest text that reads back as the same double (ArcGIS writes 17 digits; both parse)."""
    if float(value).is_integer() and abs(value) < 1e15:
        return str(int(value))
    return repr(float(value))


def _sub(parent: ET.Element, tag: str, text: str | None = None, xsi_type: str | None = None
         ) -> ET.Element:
    elem = ET.SubElement(parent, tag, {"xsi:type": f"typens:{xsi_type}"} if xsi_type else {})
    if text is not None:
        elem.text = text
    return elem


def spatial_reference_wkt(sr: SpatialReference) -> str | None:
    """ESRI-flavoured WKT for a spatial reference: the given WKT, Web Mercator's, or pyproj's.

    ESRI WKT1 because that is what ArcGIS writes and reads; GDAL recognises the flavour too.
    """
    if sr.wkt:
        return sr.wkt
    if sr.is_web_mercator:
        return WEB_MERCATOR_WKT
    try:
        from pyproj import CRS
        from pyproj.enums import WktVersion

        return CRS.from_user_input(sr.crs_input()).to_wkt(WktVersion.WKT1_ESRI) or None
    except Exception as exc:  # pyproj knows most wkids; a missing WKT only hurts GDAL
        log.warning("no WKT for %s (%s); conf.xml will carry the WKID only", sr, exc)
        return None


def _wkids(sr: SpatialReference) -> tuple[int | None, int | None]:
    if sr.is_web_mercator:
        return 102100, 3857
    return sr.wkid, sr.latest_wkid


def _spatial_reference(parent: ET.Element, sr: SpatialReference) -> None:
    wkt = spatial_reference_wkt(sr)
    geographic = bool(wkt and wkt.lstrip().upper().startswith("GEOGCS"))
    elem = _sub(parent, "SpatialReference",
                xsi_type="GeographicCoordinateSystem" if geographic else "ProjectedCoordinateSystem")
    if wkt:
        _sub(elem, "WKT", wkt)
    domain = (_DOMAIN_WEB_MERCATOR if sr.is_web_mercator
              else _DOMAIN_GEOGRAPHIC if geographic else _DOMAIN_PROJECTED)
    x_origin, y_origin, xy_scale, xy_tolerance = domain
    for tag, text in (("XOrigin", x_origin), ("YOrigin", y_origin), ("XYScale", xy_scale),
                      ("ZOrigin", "-100000"), ("ZScale", "10000"), ("MOrigin", "-100000"),
                      ("MScale", "10000"), ("XYTolerance", xy_tolerance), ("ZTolerance", "0.001"),
                      ("MTolerance", "0.001"), ("HighPrecision", "true")):
        _sub(elem, tag, text)
    wkid, latest = _wkids(sr)
    if wkid is not None:
        _sub(elem, "WKID", str(wkid))
    if latest is not None:
        _sub(elem, "LatestWKID", str(latest))


def _serialize(root: ET.Element) -> bytes:
    ET.indent(root, space="  ")
    return (_XML_DECL + ET.tostring(root, encoding="unicode") + "\n").encode("utf-8")


def conf_xml_bytes(scheme: TilingScheme, *, lods: Sequence[LevelOfDetail] | None = None,
                   tile_end: tuple[float, float] | None = None,
                   storage_format: str = COMPACT_V2, packet_size: int = 128) -> bytes:
    """The conf.xml document for ``scheme`` (see :func:`write_conf_xml`)."""
    root = ET.Element("CacheInfo", {"xsi:type": "typens:CacheInfo", **_ROOT_ATTRS})
    tci = _sub(root, "TileCacheInfo", xsi_type="TileCacheInfo")
    _spatial_reference(tci, scheme.spatial_reference)
    origin = _sub(tci, "TileOrigin", xsi_type="PointN")
    _sub(origin, "X", _num(scheme.origin_x))
    _sub(origin, "Y", _num(scheme.origin_y))
    end = tile_end or scheme.tile_end
    # GDAL assumes a grid symmetric about (0, 0) unless TileEnd says otherwise; ArcGIS ignores it.
    if end is not None and (end[0], end[1]) != (-scheme.origin_x, -scheme.origin_y):
        end_elem = _sub(tci, "TileEnd", xsi_type="PointN")
        _sub(end_elem, "X", _num(end[0]))
        _sub(end_elem, "Y", _num(end[1]))
    _sub(tci, "TileCols", str(scheme.tile_cols))
    _sub(tci, "TileRows", str(scheme.tile_rows))
    _sub(tci, "DPI", str(scheme.dpi))
    _sub(tci, "PreciseDPI", str(scheme.dpi))
    infos = _sub(tci, "LODInfos", xsi_type="ArrayOfLODInfo")
    for lod in sorted(lods if lods is not None else scheme.lods, key=lambda item: item.level):
        info = _sub(infos, "LODInfo", xsi_type="LODInfo")
        _sub(info, "LevelID", str(lod.level))
        _sub(info, "Scale", _num(lod.scale))
        _sub(info, "Resolution", _num(lod.resolution))
    tii = _sub(root, "TileImageInfo", xsi_type="TileImageInfo")
    _sub(tii, "CacheTileFormat", scheme.tile_format)
    _sub(tii, "CompressionQuality", str(scheme.compression_quality))
    _sub(tii, "Antialiasing", "false")
    csi = _sub(root, "CacheStorageInfo", xsi_type="CacheStorageInfo")
    _sub(csi, "StorageFormat", storage_format)
    _sub(csi, "PacketSize", str(packet_size))
    return _serialize(root)


def write_conf_xml(scheme: TilingScheme, path: str | os.PathLike[str], *,
                   lods: Sequence[LevelOfDetail] | None = None,
                   tile_end: tuple[float, float] | None = None,
                   storage_format: str = COMPACT_V2, packet_size: int = 128) -> None:
    """Write conf.xml listing ``lods`` (default: all of the scheme's levels).

    Which levels to list is the caller's decision and matters to GDAL, which ignores LevelID and
    names level folders by position in the sorted list; see the compact-v2 exporter.
    ``tile_end`` (default ``scheme.tile_end``) is written when the grid is not symmetric about 0.
    """
    Path(path).write_bytes(conf_xml_bytes(scheme, lods=lods, tile_end=tile_end,
                                          storage_format=storage_format, packet_size=packet_size))


def conf_cdi_bytes(envelope_or_bounds: Envelope | tuple[float, float, float, float],
                   spatial_reference: SpatialReference | None = None) -> bytes:
    """The conf.cdi document (see :func:`write_conf_cdi`)."""
    if isinstance(envelope_or_bounds, Envelope):
        bounds = envelope_or_bounds.bounds
        spatial_reference = spatial_reference or envelope_or_bounds.spatial_reference
    else:
        bounds = tuple(envelope_or_bounds)  # type: ignore[assignment]
    root = ET.Element("EnvelopeN", {"xsi:type": "typens:EnvelopeN", **_ROOT_ATTRS})
    for tag, value in zip(("XMin", "YMin", "XMax", "YMax"), bounds):
        _sub(root, tag, _num(value))
    if spatial_reference is not None:
        _spatial_reference(root, spatial_reference)
    return _serialize(root)


def write_conf_cdi(envelope_or_bounds: Envelope | tuple[float, float, float, float],
                   spatial_reference: SpatialReference | None, path: str | os.PathLike[str]) -> None:
    """Write conf.cdi: the data extent clients show as the cache's full extent."""
    Path(path).write_bytes(conf_cdi_bytes(envelope_or_bounds, spatial_reference))


# -- reading ----------------------------------------------------------------------------------

def parse_xml(data: bytes, where: str) -> ET.Element:
    """Parse XML that must not declare a DTD (no entity expansion, no external references)."""
    if _DOCTYPE.search(data):
        raise FormatError(f"{where}: refusing an XML file with a DOCTYPE or ENTITY declaration")
    try:
        root = ET.fromstring(data)
    except ET.ParseError as exc:
        raise FormatError(f"{where}: not well-formed XML ({exc})") from None
    for elem in root.iter():  # drop namespaces so lookups work whatever version the file names
        if isinstance(elem.tag, str) and "}" in elem.tag:
            elem.tag = elem.tag.rsplit("}", 1)[1]
    return root


def _text(parent: ET.Element, path: str) -> str | None:
    elem = parent.find(path)
    if elem is None or elem.text is None or not elem.text.strip():
        return None
    return elem.text.strip()


def _float(parent: ET.Element, path: str, where: str, default: float | None = None) -> float:
    text = _text(parent, path)
    if text is None:
        if default is not None:
            return default
        raise FormatError(f"{where}: missing {path}")
    try:
        return float(text)
    except ValueError:
        raise FormatError(f"{where}: {path} is {text!r}, not a number") from None


def _int(parent: ET.Element, path: str, where: str, default: int | None = None) -> int:
    value = _float(parent, path, where, None if default is None else float(default))
    if not math.isfinite(value):
        raise FormatError(f"{where}: {path} is {value}, not a whole number")
    return int(value)


def _read_sr(elem: ET.Element | None, where: str) -> SpatialReference:
    if elem is None:
        return SpatialReference()
    wkid = _text(elem, "WKID")
    latest = _text(elem, "LatestWKID")
    try:
        return SpatialReference(wkid=int(wkid) if wkid else None,
                                latest_wkid=int(latest) if latest else None,
                                wkt=_text(elem, "WKT"))
    except ValueError:
        raise FormatError(f"{where}: WKID {wkid!r} / LatestWKID {latest!r} is not a number") from None


def units_of(sr: SpatialReference) -> str:
    """ArcGIS unit name (esriMeters, esriFeet, esriDecimalDegrees) of a spatial reference."""
    wkt = sr.wkt
    if wkt:
        head = wkt.lstrip().upper()
        if head.startswith("GEOGCS"):
            return "esriDecimalDegrees"
        units = re.findall(r'UNIT\[\s*"([^"]+)"', wkt)
        if units and "FOOT" in units[-1].upper():
            return "esriFeet"
        return "esriMeters"
    if sr.is_web_mercator or (sr.wkid is None and sr.latest_wkid is None):
        return "esriMeters"
    try:
        from pyproj import CRS

        crs = CRS.from_user_input(sr.crs_input())
        if crs.is_geographic:
            return "esriDecimalDegrees"
        unit = (crs.axis_info[0].unit_name if crs.axis_info else "").lower()
        return "esriFeet" if "foot" in unit else "esriMeters"
    except Exception:
        return "esriMeters"


def read_conf_xml_info(path: str | os.PathLike[str]) -> ConfInfo:
    """Read conf.xml: the tiling scheme, the storage format and the packet size.

    A conf.xml without CacheStorageInfo (ArcGIS 9.x) is an exploded cache.
    """
    where = str(path)
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise FormatError(f"{where}: cannot read ({exc.strerror or exc})") from None
    return read_conf_xml_bytes(data, where)


def read_conf_xml_bytes(data: bytes, where: str) -> ConfInfo:
    """:func:`read_conf_xml_info` of bytes already read (a package member); ``where`` names it."""
    root = parse_xml(data, where)
    if root.tag != "CacheInfo":
        raise FormatError(f"{where}: root element is <{root.tag}>, not <CacheInfo>")
    tci = root.find("TileCacheInfo")
    if tci is None:
        raise FormatError(f"{where}: missing TileCacheInfo")
    sr = _read_sr(tci.find("SpatialReference"), where)
    lods = []
    for info in tci.iterfind("LODInfos/LODInfo"):
        lods.append(LevelOfDetail(_int(info, "LevelID", where), _float(info, "Scale", where),
                                  _float(info, "Resolution", where)))
    end: tuple[float, float] | None = None
    if tci.find("TileEnd") is not None:
        end = (_float(tci, "TileEnd/X", where), _float(tci, "TileEnd/Y", where))
    tile_format = _text(root, "TileImageInfo/CacheTileFormat") or "PNG"
    try:
        scheme = TilingScheme(
            origin_x=_float(tci, "TileOrigin/X", where), origin_y=_float(tci, "TileOrigin/Y", where),
            tile_cols=_int(tci, "TileCols", where, 256), tile_rows=_int(tci, "TileRows", where, 256),
            dpi=_int(tci, "DPI", where, 96), spatial_reference=sr, lods=tuple(lods),
            tile_format=tile_format,
            compression_quality=_int(root, "TileImageInfo/CompressionQuality", where, 0),
            units=units_of(sr), tile_end=end,
        )
    except FormatError:
        raise
    except Exception as exc:  # SchemeError and friends: say which file
        raise FormatError(f"{where}: {exc}") from None
    storage = _text(root, "CacheStorageInfo/StorageFormat") or EXPLODED
    packet = _int(root, "CacheStorageInfo/PacketSize", where, 0 if storage == EXPLODED else 128)
    return ConfInfo(scheme, storage, packet)


def read_conf_xml(path: str | os.PathLike[str]) -> TilingScheme:
    """The tiling scheme of a conf.xml."""
    return read_conf_xml_info(path).scheme


def read_conf_cdi(path: str | os.PathLike[str]) -> Envelope | None:
    """The data extent from conf.cdi (None when it holds no numbers, e.g. NaN)."""
    where = str(path)
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise FormatError(f"{where}: cannot read ({exc.strerror or exc})") from None
    return read_conf_cdi_bytes(data, where)


def read_conf_cdi_bytes(data: bytes, where: str) -> Envelope | None:
    """:func:`read_conf_cdi` of bytes already read (a package member); ``where`` names it."""
    root = parse_xml(data, where)
    if root.tag != "EnvelopeN":
        raise FormatError(f"{where}: root element is <{root.tag}>, not <EnvelopeN>")
    values = [_text(root, tag) for tag in ("XMin", "YMin", "XMax", "YMax")]
    if any(v is None for v in values):
        return None
    try:
        xmin, ymin, xmax, ymax = (float(v) for v in values)  # type: ignore[arg-type]
    except ValueError:
        return None
    if any(v != v for v in (xmin, ymin, xmax, ymax)):  # NaN
        return None
    sr_elem = root.find("SpatialReference")
    return Envelope(xmin, ymin, xmax, ymax, _read_sr(sr_elem, where) if sr_elem is not None else None)

"""Helpers that build local caches and packages the way ArcGIS (or MapProxy) lays them out.

The conf.xml texts are written by hand in ArcGIS's own shape, not with cacheorch's writer, so the
reader is checked against files its own writer did not produce. Compact V1 bundles are written by
MapProxy (an independent implementation), exploded tiles as plain files.
"""
from __future__ import annotations

import zipfile
from collections.abc import Iterable, Mapping
from io import BytesIO
from pathlib import Path

import pytest

from cacheorch.tiling import INCHES_PER_METRE, METRES_PER_DEGREE, METRES_PER_US_FOOT

__all__ = ["use_local_plugins", "conf_xml", "conf_cdi", "write_v1_bundles", "write_exploded",
           "zip_folder", "WKT_NY_FEET", "WKT_WGS84", "WKT_NZTM", "V1", "V2", "EXPLODED",
           "lods_for"]

V1 = "esriMapCacheStorageModeCompact"
V2 = "esriMapCacheStorageModeCompactV2"
EXPLODED = "esriMapCacheStorageModeExploded"
LOCAL_PLUGINS = ("cacheorch.plugins.scales_conf", "cacheorch.plugins.tiles_cache")

WKT_NY_FEET = (
    'PROJCS["NAD_1983_StatePlane_New_York_Long_Island_FIPS_3104_Feet",GEOGCS["GCS_North_American_'
    '1983",DATUM["D_North_American_1983",SPHEROID["GRS_1980",6378137.0,298.257222101]],'
    'PRIMEM["Greenwich",0.0],UNIT["Degree",0.0174532925199433]],'
    'PROJECTION["Lambert_Conformal_Conic"],PARAMETER["False_Easting",984250.0],'
    'PARAMETER["False_Northing",0.0],PARAMETER["Central_Meridian",-74.0],'
    'PARAMETER["Standard_Parallel_1",40.66666666666666],PARAMETER["Standard_Parallel_2",'
    '41.03333333333333],PARAMETER["Latitude_Of_Origin",40.16666666666666],'
    'UNIT["Foot_US",0.3048006096012192],AUTHORITY["EPSG",2263]]')
WKT_WGS84 = ('GEOGCS["GCS_WGS_1984",DATUM["D_WGS_1984",SPHEROID["WGS_1984",6378137.0,'
             '298.257223563]],PRIMEM["Greenwich",0.0],UNIT["Degree",0.0174532925199433],'
             'AUTHORITY["EPSG",4326]]')
WKT_NZTM = (
    'PROJCS["NZGD_2000_New_Zealand_Transverse_Mercator",GEOGCS["GCS_NZGD_2000",DATUM["D_NZGD_2000",'
    'SPHEROID["GRS_1980",6378137.0,298.257222101]],PRIMEM["Greenwich",0.0],'
    'UNIT["Degree",0.0174532925199433]],PROJECTION["Transverse_Mercator"],'
    'PARAMETER["False_Easting",1600000.0],PARAMETER["False_Northing",10000000.0],'
    'PARAMETER["Central_Meridian",173.0],PARAMETER["Scale_Factor",0.9996],'
    'PARAMETER["Latitude_Of_Origin",0.0],UNIT["Meter",1.0],AUTHORITY["EPSG",2193]]')

_METRES_PER_UNIT = {"m": 1.0, "ft": METRES_PER_US_FOOT, "deg": METRES_PER_DEGREE}


def lods_for(scales: Iterable[float], unit: str, dpi: int = 96, first: int = 0
             ) -> list[tuple[int, float, float]]:
    """(level, scale, resolution) the way ArcGIS relates them (39.37 in/m; 6,370,997 m sphere)."""
    per_px = dpi * INCHES_PER_METRE * _METRES_PER_UNIT[unit]
    return [(first + i, scale, scale / per_px) for i, scale in enumerate(scales)]


def _esc(text: str) -> str:
    return text.replace("&", "&amp;").replace('"', "&quot;").replace("<", "&lt;")


def _sr_xml(wkt: str, wkid: int, geographic: bool) -> str:
    kind = "GeographicCoordinateSystem" if geographic else "ProjectedCoordinateSystem"
    left = "<LeftLongitude>-180</LeftLongitude>" if geographic else ""
    return (f"<SpatialReference xsi:type='typens:{kind}'><WKT>{_esc(wkt)}</WKT>"
            f"<XOrigin>-400</XOrigin><YOrigin>-400</YOrigin><XYScale>1000000000</XYScale>"
            f"<XYTolerance>8.983152841195215e-09</XYTolerance><HighPrecision>true</HighPrecision>"
            f"{left}<WKID>{wkid}</WKID><LatestWKID>{wkid}</LatestWKID></SpatialReference>")


def conf_xml(*, wkt: str, wkid: int, origin: tuple[float, float],
             lods: Iterable[tuple[int, float, float]], tile_size: int = 256, dpi: int = 96,
             tile_format: str = "PNG", storage: str = V1, geographic: bool = False,
             namespace: str = "10.1") -> bytes:
    """A conf.xml as ArcGIS Server 10.x writes it (namespace, xsi:types and all)."""
    infos = "".join(f"<LODInfo xsi:type='typens:LODInfo'><LevelID>{level}</LevelID><Scale>{scale!r}"
                    f"</Scale><Resolution>{res!r}</Resolution></LODInfo>" for level, scale, res in lods)
    packet = 0 if storage == EXPLODED else 128
    text = (
        "<?xml version=\"1.0\" encoding=\"utf-8\" ?>"
        "<CacheInfo xsi:type='typens:CacheInfo' xmlns:xsi='http://www.w3.org/2001/XMLSchema-instance' "
        "xmlns:xs='http://www.w3.org/2001/XMLSchema' "
        f"xmlns:typens='http://www.esri.com/schemas/ArcGIS/{namespace}'>"
        "<TileCacheInfo xsi:type='typens:TileCacheInfo'>"
        f"{_sr_xml(wkt, wkid, geographic)}"
        f"<TileOrigin xsi:type='typens:PointN'><X>{origin[0]!r}</X><Y>{origin[1]!r}</Y></TileOrigin>"
        f"<TileCols>{tile_size}</TileCols><TileRows>{tile_size}</TileRows><DPI>{dpi}</DPI>"
        f"<PreciseDPI>{dpi}</PreciseDPI>"
        f"<LODInfos xsi:type='typens:ArrayOfLODInfo'>{infos}</LODInfos></TileCacheInfo>"
        "<TileImageInfo xsi:type='typens:TileImageInfo'>"
        f"<CacheTileFormat>{tile_format}</CacheTileFormat>"
        "<CompressionQuality>75</CompressionQuality><Antialiasing>true</Antialiasing></TileImageInfo>"
        f"<CacheStorageInfo xsi:type='typens:CacheStorageInfo'><StorageFormat>{storage}</StorageFormat>"
        f"<PacketSize>{packet}</PacketSize></CacheStorageInfo></CacheInfo>")
    return text.encode("utf-8")


def conf_cdi(bounds: tuple[float, float, float, float]) -> bytes:
    xmin, ymin, xmax, ymax = bounds
    return ("<?xml version=\"1.0\" encoding=\"utf-8\" ?><EnvelopeN xsi:type='typens:EnvelopeN' "
            "xmlns:xsi='http://www.w3.org/2001/XMLSchema-instance' "
            "xmlns:typens='http://www.esri.com/schemas/ArcGIS/10.1'>"
            f"<XMin>{xmin!r}</XMin><YMin>{ymin!r}</YMin><XMax>{xmax!r}</XMax><YMax>{ymax!r}</YMax>"
            "</EnvelopeN>").encode()


def write_v1_bundles(alllayers: Path, tiles: Mapping[tuple[int, int, int], bytes]) -> None:
    """Compact V1 bundle + bundlx pairs under ``_alllayers``, written by MapProxy."""
    from mapproxy.cache.compact import CompactCacheV1
    from mapproxy.cache.tile import Tile
    from mapproxy.image import ImageResult

    cache = CompactCacheV1(str(alllayers))
    batch = [Tile((col, row, level), ImageResult(BytesIO(data)))
             for (level, row, col), data in tiles.items()]
    assert cache.store_tiles(batch)


def write_exploded(alllayers: Path, tiles: Mapping[tuple[int, int, int], bytes], ext: str = "png"
                   ) -> None:
    """``L05/R0000000a/C00000004.png`` files, as ArcGIS writes an exploded cache."""
    for (level, row, col), data in tiles.items():
        folder = alllayers / f"L{level:02d}" / f"R{row:08x}"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"C{col:08x}.{ext}").write_bytes(data)


def zip_folder(folder: Path, output: Path, prefix: str = "",
               compression: int = zipfile.ZIP_STORED, extra: Mapping[str, bytes] | None = None
               ) -> Path:
    """Zip every file of ``folder`` (under ``prefix``) into ``output``, files only (as ArcGIS does)."""
    with zipfile.ZipFile(output, "w", compression) as zf:
        for path in sorted(p for p in folder.rglob("*") if p.is_file()):
            zf.write(path, prefix + path.relative_to(folder).as_posix())
        for name, data in (extra or {}).items():
            zf.writestr(name, data)
    return output


@pytest.fixture
def use_local_plugins(monkeypatch: pytest.MonkeyPatch):
    """Make sure ``conf`` and ``cache`` are registered (until they are built-ins in DEFAULT_PLUGINS)."""
    import cacheorch.pluginmanager as pluginmanager

    missing = tuple(m for m in LOCAL_PLUGINS if m not in pluginmanager.DEFAULT_PLUGINS)
    if missing:
        monkeypatch.setattr(pluginmanager, "DEFAULT_PLUGINS", pluginmanager.DEFAULT_PLUGINS + missing)
    pluginmanager.get_plugins.cache_clear()
    yield
    pluginmanager.get_plugins.cache_clear()

"""conf.xml / conf.cdi: real files read right, written files read back and open in GDAL."""
from __future__ import annotations

import math
from pathlib import Path

import pytest
import rasterio
from rasterio.errors import RasterioIOError

from cacheorch.errors import FormatError
from cacheorch.formats.confxml import (
    COMPACT_V1, COMPACT_V2, EXPLODED, WEB_MERCATOR_WKT, conf_xml_bytes, read_conf_cdi,
    read_conf_xml, read_conf_xml_info, write_conf_cdi, write_conf_xml,
)
from cacheorch.tiling import (
    Envelope, LevelOfDetail, SpatialReference, TilingScheme, scale_of, web_mercator_scheme,
)


def test_reads_esri_sample(fixtures):
    info = read_conf_xml_info(fixtures / "esri_compactcache_sample" / "conf.xml")
    scheme = info.scheme
    assert (info.storage_format, info.packet_size) == (COMPACT_V2, 128)
    assert scheme.levels == tuple(range(20))
    assert scheme.lod(1).resolution == 78271.516963999937
    assert scheme.lod(0).scale == 591657527.591555
    assert (scheme.origin_x, scheme.origin_y) == (-20037508.342787001, 20037508.342787001)
    assert (scheme.tile_cols, scheme.tile_rows, scheme.dpi) == (256, 256, 96)
    assert scheme.spatial_reference.wkid == 3857 and scheme.spatial_reference.is_web_mercator
    assert (scheme.tile_format, scheme.compression_quality, scheme.units) == ("JPEG", 75, "esriMeters")


def test_reads_gdal_sample_with_tile_end_and_mixed(fixtures):
    scheme = read_conf_xml(fixtures / "gdal_esric" / "conf.xml")
    assert scheme.tile_end == (20037508.342787001, -20037508.342787001)
    assert scheme.tile_format == "MIXED" and scheme.levels == (0, 1, 2, 3)


def test_reads_other_storage_formats_and_grids(fixtures):
    v1 = read_conf_xml_info(fixtures / "gwc" / "compactcacheV1" / "Conf.xml")
    assert v1.storage_format == COMPACT_V1
    assert v1.scheme.spatial_reference.wkid == 102100
    nztm = read_conf_xml_info(fixtures / "gwc" / "arcgis_10.1_conf.xml")
    assert nztm.storage_format == EXPLODED and nztm.packet_size == 0
    assert nztm.scheme.tile_cols == 512 and nztm.scheme.lod(0).scale == 8000000
    assert nztm.scheme.spatial_reference.wkid == 2193 and nztm.scheme.units == "esriMeters"


def test_feet_and_degree_units_come_from_the_wkt(tmp_path):
    feet = SpatialReference(wkt='PROJCS["NAD_1983_StatePlane_New_York_Long_Island_FIPS_3104_Feet",'
                                'GEOGCS["GCS_North_American_1983",DATUM["D_North_American_1983",'
                                'SPHEROID["GRS_1980",6378137.0,298.257222101]],PRIMEM["Greenwich",0.0],'
                                'UNIT["Degree",0.0174532925199433]],PROJECTION["Lambert_Conformal_Conic"],'
                                'PARAMETER["False_Easting",984250.0],PARAMETER["False_Northing",0.0],'
                                'PARAMETER["Central_Meridian",-74.0],'
                                'PARAMETER["Standard_Parallel_1",40.66666666666666],'
                                'PARAMETER["Standard_Parallel_2",41.03333333333333],'
                                'PARAMETER["Latitude_Of_Origin",40.16666666666666],'
                                'UNIT["Foot_US",0.3048006096012192]]')
    scheme = TilingScheme(-120039300, 145506100, 512, 512, 96, feet,
                          (LevelOfDetail(0, 1152 * 100.0, 100.0),))
    write_conf_xml(scheme, tmp_path / "conf.xml")
    assert read_conf_xml(tmp_path / "conf.xml").units == "esriFeet"
    gcs = TilingScheme(-180, 90, 512, 512, 96, SpatialReference(4326),
                       (LevelOfDetail(0, 1e8, 0.3515625),))
    write_conf_xml(gcs, tmp_path / "gcs.xml")
    text = (tmp_path / "gcs.xml").read_text()
    assert "typens:GeographicCoordinateSystem" in text and "<WKT>GEOGCS[" in text
    assert read_conf_xml(tmp_path / "gcs.xml").units == "esriDecimalDegrees"


def test_round_trip_web_mercator(tmp_path):
    scheme = web_mercator_scheme(max_level=5, tile_format="JPEG")
    scheme = TilingScheme(**{**scheme.__dict__, "compression_quality": 80, "_by_level": {}})
    write_conf_xml(scheme, tmp_path / "conf.xml")
    info = read_conf_xml_info(tmp_path / "conf.xml")
    back = info.scheme
    assert back.lods == scheme.lods  # exact doubles survive
    assert (back.origin_x, back.origin_y, back.tile_cols, back.dpi) == \
        (scheme.origin_x, scheme.origin_y, 256, 96)
    assert (back.tile_format, back.compression_quality) == ("JPEG", 80)
    assert (info.storage_format, info.packet_size) == (COMPACT_V2, 128)
    sr = back.spatial_reference
    assert (sr.wkid, sr.latest_wkid, sr.wkt) == (102100, 3857, WEB_MERCATOR_WKT)
    assert back.fingerprint() == scheme.fingerprint()


def test_web_mercator_wkt_matches_the_real_samples(fixtures):
    for sample in ("esri_compactcache_sample/conf.xml", "gdal_esric/conf.xml"):
        assert read_conf_xml(fixtures / sample).spatial_reference.wkt == WEB_MERCATOR_WKT


def test_other_wkids_get_esri_wkt_from_pyproj(tmp_path):
    scheme = TilingScheme(-4020900, 19998100, 512, 512, 96, SpatialReference(2193, 2193),
                          (LevelOfDetail(0, 8000000, 2116.670900008467),))
    write_conf_xml(scheme, tmp_path / "conf.xml")
    sr = read_conf_xml(tmp_path / "conf.xml").spatial_reference
    assert sr.wkt.startswith('PROJCS["NZGD_2000_New_Zealand_Transverse_Mercator"')
    assert (sr.wkid, sr.latest_wkid) == (2193, 2193)


def test_lods_argument_and_tile_end(tmp_path):
    scheme = web_mercator_scheme(max_level=10)
    data = conf_xml_bytes(scheme, lods=[scheme.lod(n) for n in (0, 1, 2)], tile_end=(1.0, -2.0))
    (tmp_path / "conf.xml").write_bytes(data)
    back = read_conf_xml(tmp_path / "conf.xml")
    assert back.levels == (0, 1, 2) and back.tile_end == (1.0, -2.0)
    # A symmetric end is what GDAL assumes anyway, so it is not written.
    assert b"TileEnd" not in conf_xml_bytes(scheme)


def test_refuses_dtd_and_entities(tmp_path):
    good = conf_xml_bytes(web_mercator_scheme(max_level=1))
    evil = good.replace(b"<CacheInfo", b'<!DOCTYPE x [<!ENTITY e SYSTEM "file:///etc/passwd">]>\n'
                                       b"<CacheInfo", 1)
    (tmp_path / "conf.xml").write_bytes(evil)
    with pytest.raises(FormatError, match="DOCTYPE"):
        read_conf_xml(tmp_path / "conf.xml")


@pytest.mark.parametrize("body,message", [
    (b"<CacheInfo><TileCacheInfo>", "well-formed"),
    (b"<Other/>", "not <CacheInfo>"),
    (b"<CacheInfo/>", "TileCacheInfo"),
    (b"<CacheInfo><TileCacheInfo><TileOrigin><X>a</X><Y>1</Y></TileOrigin><LODInfos><LODInfo>"
     b"<LevelID>0</LevelID><Scale>1</Scale><Resolution>1</Resolution></LODInfo></LODInfos>"
     b"</TileCacheInfo></CacheInfo>", "not a number"),
    (b"<CacheInfo><TileCacheInfo><TileOrigin><X>0</X><Y>1</Y></TileOrigin>"
     b"</TileCacheInfo></CacheInfo>", "no levels"),
])
def test_malformed_files_raise_format_error(tmp_path, body, message):
    (tmp_path / "conf.xml").write_bytes(body)
    with pytest.raises(FormatError, match=message):
        read_conf_xml(tmp_path / "conf.xml")


def test_conf_cdi_round_trip_and_samples(tmp_path, fixtures):
    sr = SpatialReference(102100, 3857)
    write_conf_cdi((-1000.5, -2000.25, 3000.0, 4000.125), sr, tmp_path / "conf.cdi")
    env = read_conf_cdi(tmp_path / "conf.cdi")
    assert env.bounds == (-1000.5, -2000.25, 3000.0, 4000.125)
    assert (env.spatial_reference.wkid, env.spatial_reference.latest_wkid) == (102100, 3857)
    write_conf_cdi(Envelope(1, 2, 3, 4), None, tmp_path / "bare.cdi")
    assert read_conf_cdi(tmp_path / "bare.cdi") == Envelope(1, 2, 3, 4)
    esri = read_conf_cdi(fixtures / "esri_compactcache_sample" / "conf.cdi")
    assert esri.xmax == 20037507.229594339 and esri.spatial_reference is None
    gwc = read_conf_cdi(fixtures / "gwc" / "compactcacheV1" / "conf.cdi")
    assert gwc.spatial_reference.wkid == 102100 and math.isclose(gwc.xmin, -13885038.382960921)


# -- what GDAL accepts ------------------------------------------------------------------------

def _gdal_open(path: Path):
    return rasterio.open(path, driver="ESRIC")


def test_gdal_refuses_all_24_web_mercator_levels_but_reads_0_to_22(tmp_path):
    """Why the exporter lists levels only up to the finest exported one (see listed_lods)."""
    scheme = web_mercator_scheme(max_level=23)
    write_conf_xml(scheme, tmp_path / "conf.xml")
    with pytest.raises(RasterioIOError, match="Too many levels"):
        _gdal_open(tmp_path / "conf.xml")
    write_conf_xml(scheme, tmp_path / "conf.xml", lods=[scheme.lod(n) for n in range(23)])
    with _gdal_open(tmp_path / "conf.xml") as ds:
        assert ds.width == 256 * 2 ** 22
        assert ds.transform.a == pytest.approx(scheme.lod(22).resolution)
        assert ds.crs.to_epsg() == 3857


def test_gdal_reads_written_conf_xml_geometry(tmp_path):
    scheme = web_mercator_scheme(max_level=4, tile_size=512)
    write_conf_xml(scheme, tmp_path / "conf.xml")
    with _gdal_open(tmp_path / "conf.xml") as ds:
        assert (ds.width, ds.height) == (512 * 16, 512 * 16)
        assert ds.block_shapes[0] == (512, 512)
        assert ds.overviews(1) == [2, 4, 8, 16]
        assert (ds.transform.c, ds.transform.f) == (scheme.origin_x, scheme.origin_y)
        assert ds.count == 4  # PNG caches are RGBA in GDAL


def test_gdal_reads_a_non_mercator_scheme(tmp_path):
    lods = tuple(LevelOfDetail(n, scale_of(res), res) for n, res in enumerate((2116.6709, 1058.33545)))
    scheme = TilingScheme(-4020900, 19998100, 512, 512, 96, SpatialReference(2193, 2193), lods)
    write_conf_xml(scheme, tmp_path / "conf.xml")
    with _gdal_open(tmp_path / "conf.xml") as ds:
        assert ds.crs.to_epsg() == 2193
        assert ds.transform.a == pytest.approx(1058.33545)
        assert ds.width == int(2 * 4020900 / 1058.33545)  # symmetric grid, as GDAL assumes

"""The featureservice area, checked by cacheorch's contract for area generators and by its own tests."""
from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))  # fakelayer.py beside this file
from fakelayer import FakeLayer, square  # noqa: E402

from cacheorch.connection import Connection  # noqa: E402
from cacheorch.errors import AreaError  # noqa: E402
from cacheorch.testing import AreaContract, web_mercator_service  # noqa: E402
from cacheorch_featureservice import FeatureServiceArea  # noqa: E402

KM = 1000.0
#: Five parcels, three of them in district 7, in Web Mercator metres.
PARCELS = [(square(i * 10 * KM, 0, 5 * KM), {"DISTRICT": 7 if i % 2 == 0 else 8}) for i in range(5)]


@pytest.fixture
def layer() -> Iterator[FakeLayer]:
    with FakeLayer(PARCELS, max_record_count=2) as srv:
        yield srv


class TestFeatureServiceContract(AreaContract):
    """Everything cacheorch expects of any area generator."""

    plugin = FeatureServiceArea
    bad_specs = ("not a url", "https://h/arcgis/rest/services/X/MapServer",
                 "http://127.0.0.1:9/arcgis/rest/services/X/FeatureServer/0",
                 "https://h/arcgis/rest/services/X/FeatureServer/0?token=abc",
                 "https://h/arcgis/rest/services/X/FeatureServer/0?colour=red")

    @pytest.fixture
    def spec(self, layer: FakeLayer) -> str:
        return f"{layer.url}?where=DISTRICT = 7"


def area(spec: str):
    return FeatureServiceArea().area(spec, web_mercator_service(12), Connection())


def test_pages_through_every_feature_and_unions_them(layer: FakeLayer) -> None:
    geom = area(f"{layer.url}?where=DISTRICT%3D7")
    assert len(layer.queries) == 2  # 3 features, 2 per page
    assert [q["resultOffset"] for q in layer.queries] == ["0", "2"]
    assert all(q["outSR"] == "102100" and q["returnGeometry"] == "true" for q in layer.queries)
    assert geom.area == pytest.approx(3 * (5 * KM) ** 2)


def test_no_where_means_every_feature(layer: FakeLayer) -> None:
    assert area(layer.url).area == pytest.approx(5 * (5 * KM) ** 2)


def test_empty_result_is_one_clear_line(layer: FakeLayer) -> None:
    with pytest.raises(AreaError, match="no feature matches"):
        area(f"{layer.url}?where=DISTRICT=99")


def test_a_line_layer_is_refused() -> None:
    with FakeLayer(PARCELS, geometry_type="esriGeometryPolyline") as srv:
        with pytest.raises(AreaError, match="esriGeometryPolyline, not polygons"):
            area(srv.url)


def test_an_error_json_names_the_code() -> None:
    with FakeLayer(PARCELS, error=(400, "Invalid URL")) as srv:
        with pytest.raises(AreaError, match="error 400: Invalid URL"):
            area(srv.url)

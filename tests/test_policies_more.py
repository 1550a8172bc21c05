"""Budget, service-limits and exclude policies; the policy context; `plan`'s per-level decisions.

Expected tile counts are computed here from the grid (4^level for a whole Web Mercator world,
per-tile box tests for an area), never taken from the planner under test.
"""
from __future__ import annotations

import json
from dataclasses import replace

import pytest
from shapely.geometry import box

from _tileserver import TileServer
from _tiles import pad_png
from cacheorch.errors import LevelError, PolicyError
from cacheorch.formats.png import encode_png
from cacheorch.interfaces import PolicyContext, SelectionPolicy, Service
from cacheorch.plugins.policy_budget import (MaxBytesPolicy, MaxTilesPolicy, parse_bytes,
                                             parse_count)
from cacheorch.plugins.policy_exclude import ExcludePolicy
from cacheorch.plugins.policy_levels import LevelsPolicy
from cacheorch.plugins.policy_service_limits import ServiceLimitsPolicy
from cacheorch.tiling import WEB_MERCATOR_HALF, web_mercator_scheme

WM = web_mercator_scheme(max_level=8)
MY_MODULES = ("cacheorch.plugins.policy_budget", "cacheorch.plugins.policy_service_limits",
              "cacheorch.plugins.policy_exclude", "cacheorch.plugins.aoi_wkt",
              "cacheorch.plugins.aoi_layer", "cacheorch.plugins.aoi_buffer")


class FakeContext(PolicyContext):
    """Counts and sizes given by the test; records which exact counts were asked for."""

    def __init__(self, counts, sizes=None, service=None, lower=None):
        self.counts, self.sizes, self.lower = counts, sizes or {}, lower
        self._service = service or Service("https://h/arcgis/rest/services/S/MapServer", WM)
        self.asked: list[int] = []
        self.sampled: list[int] = []
        self.notes: list[str] = []

    @property
    def service(self):
        return self._service

    def tiles(self, level):
        self.asked.append(level)
        return self.counts[level]

    def tiles_at_least(self, level):
        return self.lower(level) if self.lower else self.counts[level]

    def sample_bytes(self, level):
        self.sampled.append(level)
        return self.sizes.get(level)

    def note(self, text):
        self.notes.append(text)


WORLD = {level: 4 ** level for level in range(9)}


def run(policy: SelectionPolicy, context, levels=None, scheme=WM) -> list[int]:
    chosen = policy.apply(scheme, list(scheme.lods) if levels is None else levels, context)
    return [lod.level for lod in chosen]


def max_tiles(n, prefer="fine"):
    return MaxTilesPolicy(MaxTilesPolicy.Options(tiles=str(n), prefer=prefer))


# -- max-tiles ----------------------------------------------------------------------------------

@pytest.mark.parametrize("budget, prefer, expected", [
    (100, "fine", [0, 1, 2, 3]),        # 85 tiles
    (70, "fine", [0, 1, 3]),            # the finest that fits (64), then 4 + 1 more: 69
    (70, "coarse", [0, 1, 2]),          # 21, stopping at level 3 (64 would make 85)
    (1, "fine", [0]),
    (87381, "fine", list(range(9))),    # all of 0-8 exactly
    (87380, "fine", list(range(1, 9))),  # one tile short: the finest all fit, level 0 does not
    (87380, "coarse", list(range(8))),  # coarse first: level 8 is the one left out
])
def test_max_tiles_keeps_the_finest_levels_that_fit(budget, prefer, expected):
    policy = max_tiles(budget, prefer)
    kept = run(policy, FakeContext(WORLD))
    assert kept == expected
    assert sum(WORLD[level] for level in kept) <= budget


def test_max_tiles_reasons_say_the_numbers():
    policy = max_tiles(70)
    run(policy, FakeContext(WORLD))
    assert policy.reason(3, True) == "64 tiles, 64 tiles in all"
    assert policy.reason(2, False) == "at least 16 tiles, more than the 6 tiles left of 70 tiles"
    assert policy.reason(8, False).startswith("at least 65,536 tiles, more than the 70 tiles left")
    coarse = max_tiles(70, "coarse")
    run(coarse, FakeContext(WORLD))
    assert coarse.reason(5, False) == "finer than level 3, which did not fit"
    assert "max-tiles 70 (fine first)" == policy.explain()


def test_max_tiles_drops_a_level_on_its_lower_bound_without_counting_it():
    ctx = FakeContext(WORLD, lower=lambda level: 4 ** level // 2)
    assert run(max_tiles(100), ctx) == [0, 1, 2, 3]
    # levels 4-8 have bounds (128 and more) over the budget: never counted exactly; a bound
    # under what is left still gets the exact count
    assert ctx.asked == [3, 2, 1, 0]
    exact = FakeContext(WORLD, lower=lambda level: 0)
    policy = max_tiles(70)
    assert run(policy, exact) == [0, 1, 3]
    assert policy.reason(2, False) == "16 tiles would make 80 tiles, over 70 tiles"


def test_max_tiles_only_narrows_what_earlier_policies_left():
    levels = [WM.lod(2), WM.lod(5), WM.lod(6)]
    assert run(max_tiles(2000), FakeContext(WORLD), levels) == [2, 5]


@pytest.mark.parametrize("text, value", [("100000", 100000), ("100_000", 100000),
                                         ("1,000,000", 1000000), ("100k", 100000), ("2M", 2000000),
                                         ("1e6", 1000000), ("1.5k", 1500)])
def test_tile_counts_in_many_spellings(text, value):
    assert parse_count(text, "max-tiles") == value


@pytest.mark.parametrize("text", ["", "lots", "-5", "0", "1.5", "10x"])
def test_bad_tile_counts(text):
    with pytest.raises(PolicyError) as err:
        run(max_tiles(text), FakeContext(WORLD))
    assert "max-tiles" in str(err.value) and "\n" not in str(err.value)


def test_bad_prefer_and_missing_context():
    with pytest.raises(PolicyError, match="prefer='middle'"):
        run(max_tiles(10, "middle"), FakeContext(WORLD))
    with pytest.raises(PolicyError, match="needs each level's planned tiles"):
        max_tiles(10).select(WM, list(WM.lods))


# -- the context is passed only to policies that take it ----------------------------------------

class TwoArgs(SelectionPolicy):
    name = "two"

    def select(self, scheme, levels):
        return list(levels)[:2]


class Star(SelectionPolicy):
    name = "star"

    def select(self, scheme, levels, *rest):
        self.rest = rest
        return list(levels)


def test_apply_inspects_the_signature():
    ctx = FakeContext(WORLD)
    assert run(TwoArgs(), ctx) == [0, 1]
    assert run(LevelsPolicy(LevelsPolicy.Options(levels="3-4")), ctx) == [3, 4]
    star = Star()
    run(star, ctx)
    assert star.rest == (ctx,)
    assert TwoArgs().reason(0, True) == ""


# -- max-bytes ----------------------------------------------------------------------------------

@pytest.mark.parametrize("text, value", [("500MB", 500_000_000), ("2GB", 2 * 10**9),
                                         ("1.5GiB", int(1.5 * 2**30)), ("123456", 123456),
                                         ("10 kb", 10000), ("64KiB", 65536), ("1T", 10**12)])
def test_byte_sizes(text, value):
    assert parse_bytes(text, "max-bytes") == value


@pytest.mark.parametrize("text", ["", "big", "0", "5 parsecs", "-1MB"])
def test_bad_byte_sizes(text):
    with pytest.raises(PolicyError):
        parse_bytes(text, "max-bytes")


def max_bytes(text, prefer="fine"):
    return MaxBytesPolicy(MaxBytesPolicy.Options(bytes=text, prefer=prefer))


def test_max_bytes_fine_first_then_coarser_that_still_fit():
    sizes = {level: 1000.0 * (level + 1) for level in range(9)}
    policy = max_bytes("300KB")
    # fine first: 3 (256,000) fits; 2 (48,000) would make 304,000: skipped; 1 and 0 fit (265,000)
    assert run(policy, FakeContext(WORLD, sizes)) == [0, 1, 3]
    assert policy.reason(3, True) == "256.0 KB, 256.0 KB in all (64 tiles × 4.0 KB sampled)"
    assert policy.reason(2, False) == "at least 48.0 KB, more than the 44.0 KB left of 300.0 KB"
    assert run(max_bytes("300KB", "coarse"), FakeContext(WORLD, sizes)) == [0, 1, 2]


def test_max_bytes_borrows_the_size_of_the_nearest_sampled_level():
    sizes = {0: 500.0, 2: 2000.0}  # levels 1 and 3 all missing
    ctx = FakeContext(WORLD, sizes)
    policy = max_bytes("200000")
    levels = [WM.lod(level) for level in range(4)]
    # level 3: 64 × 2000 (from level 2) = 128,000; 2: 32,000; 1: 4 × 500 or 2000 …
    kept = run(policy, ctx, levels)
    assert kept == [0, 1, 2, 3]
    assert "tile size of a nearby level" in policy.reason(3, True)
    assert "(1 tiles × 500 B sampled)" in policy.reason(0, True)


def test_max_bytes_without_any_sample_is_an_error():
    with pytest.raises(PolicyError, match="no sample tile could be fetched"):
        run(max_bytes("1GB"), FakeContext(WORLD, {}))


# -- service-limits ------------------------------------------------------------------------------

def test_service_limits_drops_levels_outside_min_and_max_lod():
    scheme = replace(WM, min_lod=2, max_lod=5, _by_level={})
    policy = ServiceLimitsPolicy(ServiceLimitsPolicy.Options())
    assert run(policy, None, scheme=scheme) == [2, 3, 4, 5]
    assert policy.reason(1, False) == "below the service's minLOD 2"
    assert policy.reason(7, False) == "above the service's maxLOD 5"


def test_service_limits_notes_max_export_tiles_count():
    svc = Service("https://h/arcgis/rest/services/S/MapServer", WM, max_export_tiles_count=100)
    ctx = FakeContext(WORLD, service=svc)
    policy = ServiceLimitsPolicy(ServiceLimitsPolicy.Options())
    assert run(policy, ctx, [WM.lod(level) for level in range(5)]) == [0, 1, 2, 3, 4]
    assert ctx.notes == ["service-limits: 341 tiles exceed the service's maxExportTilesCount 100; "
                         "that limits server-side exportTiles only (fit_export=true keeps the "
                         "levels that fit)"]
    quiet = FakeContext(WORLD, service=svc)
    run(policy, quiet, [WM.lod(level) for level in range(4)])  # 85 tiles: no note
    assert quiet.notes == []
    fit = ServiceLimitsPolicy(ServiceLimitsPolicy.Options(fit_export=True))
    assert run(fit, FakeContext(WORLD, service=svc)) == [0, 1, 2, 3]
    assert fit.reason(4, False) == ("maxExportTilesCount: at least 256 tiles, more than the "
                                    "15 tiles left of 100 tiles")


# -- exclude ---------------------------------------------------------------------------------------

def test_exclude_levels_and_scales():
    policy = ExcludePolicy(ExcludePolicy.Options(levels="2,5-6"))
    assert run(policy, None) == [0, 1, 3, 4, 7, 8]
    assert policy.reason(2, False) == "excluded"
    by_scale = ExcludePolicy(ExcludePolicy.Options(scales=f"1:{WM.lod(3).scale:.6f};"
                                                          f"{WM.lod(8).scale:.4f}"))
    assert run(by_scale, None) == [0, 1, 2, 4, 5, 6, 7]


@pytest.mark.parametrize("options, error, words", [
    ({"levels": "30"}, LevelError, "level 30 is not in the tiling scheme"),
    ({"levels": "a-b"}, PolicyError, "not a level list"),
    ({"scales": "12345"}, LevelError, "matches no level; nearest"),
    ({"scales": "big"}, PolicyError, "not a scale"),
    ({}, PolicyError, "no levels or scales given"),
])
def test_exclude_errors(options, error, words):
    with pytest.raises(error, match=words):
        run(ExcludePolicy(ExcludePolicy.Options(**options)), None)


# -- through `plan`: counts from the planner, samples from a loopback server ------------------------

@pytest.fixture
def my_plugins(monkeypatch):
    """The built-ins plus this issue's modules (until the lead lists them in DEFAULT_PLUGINS)."""
    from cacheorch import pluginmanager
    extra = tuple(m for m in MY_MODULES if m not in pluginmanager.DEFAULT_PLUGINS)
    monkeypatch.setattr(pluginmanager, "DEFAULT_PLUGINS", pluginmanager.DEFAULT_PLUGINS + extra)
    pluginmanager.get_plugins.cache_clear()
    yield
    pluginmanager.get_plugins.cache_clear()


def service_json(scheme, **extra):
    sr = {"wkid": 102100, "latestWkid": 3857}
    h = WEB_MERCATOR_HALF
    extent = {"xmin": -h, "ymin": -h, "xmax": h, "ymax": h, "spatialReference": sr}
    return {"currentVersion": 10.81, "mapName": "Layers", "singleFusedMapCache": True,
            "capabilities": "Map", "spatialReference": sr, "units": "esriMeters",
            "tileInfo": scheme.to_json(), "fullExtent": extent, "initialExtent": extent, **extra}


#: A Web Mercator rectangle (no projection involved): 2 tiles at level 1, 165 at level 6.
RECT = (-5e6, 1e6, 4e6, 7e6)


def tiles_in_rect(level: int) -> int:
    """Per-tile box test, independent of the planner."""
    n = 2 ** level
    area = box(*RECT)
    return sum(1 for r in range(n) for c in range(n)
               if box(*WM.tile_bounds(level, r, c)).intersection(area).area > 0)


@pytest.fixture
def sized_server():
    """Levels 0-6; a tile of level L is (L + 1) × 1000 bytes; level 5's tiles are all missing."""
    small = encode_png(1, 1, b"\0\0\0")
    tiles = {(lv, r, c): pad_png(small, (lv + 1) * 1000)
             for lv in range(7) for r in range(2 ** lv) for c in range(2 ** lv) if lv != 5}
    scheme = web_mercator_scheme(6)
    with TileServer(tiles, service=service_json(scheme, maxExportTilesCount=500)) as srv:
        yield srv


def test_plan_max_tiles_explains_every_level(cli, my_plugins, sized_server):
    counts = {level: tiles_in_rect(level) for level in range(7)}
    budget = counts[6] + counts[3] + counts[2]  # fine first: 6 fits, 5 and 4 do not, then 3, 2 …
    assert counts[5] + counts[6] > budget and counts[4] + counts[6] > budget
    rect = ",".join(f"{v:g}" for v in RECT)
    result = cli("plan", "--service", sized_server.url, "--levels", "1-6",
                 "--policy", f"max-tiles:{budget}", "--aoi", f"bbox:{rect}", "--json")
    assert result.code == 0, result.stderr
    plan = json.loads(result.stdout)
    kept = [lv["level"] for lv in plan["levels"]]
    # 6 (165 tiles) fits; 5 (48) and 4 (12) do not; 3 (4) and 2 (2) do; 1 (2) is one too many
    assert counts == {0: 1, 1: 2, 2: 2, 3: 4, 4: 12, 5: 48, 6: 165}
    assert kept == [2, 3, 6]
    assert [lv["tiles_planned"] for lv in plan["levels"]] == [counts[lv] for lv in kept]
    assert plan["tiles_planned"] <= budget
    decisions = {d["level"]: d for d in plan["decisions"]}
    assert sorted(decisions) == list(range(7))
    assert decisions[0]["kept"] is False and decisions[0]["policy"] == "levels"
    assert decisions[0]["reason"] == "dropped by levels 1-6"
    assert decisions[5]["policy"] == "max-tiles" and "tiles" in decisions[5]["reason"]
    assert decisions[6]["kept"] and [s["policy"] for s in decisions[6]["steps"]] == \
        ["levels", "max-tiles"]
    assert decisions[6]["reason"] == (f"kept by levels 1-6; max-tiles {budget} (fine first): "
                                      f"{counts[6]:,} tiles, {counts[6]:,} tiles in all")
    assert not any("/tile/" in path for path in sized_server.requests)  # counting fetches nothing
    human = cli("plan", "--service", sized_server.url, "--levels", "1-6",
                "--policy", f"max-tiles:{budget}", "--aoi", f"bbox:{rect}")
    assert human.code == 0, human.stderr
    assert "decision       0  dropped by levels 1-6" in human.stdout
    assert f"decision       6  kept by levels 1-6; max-tiles {budget}" in human.stdout


def test_plan_max_bytes_samples_a_few_tiles_per_level(cli, my_plugins, sized_server):
    rect = ",".join(f"{v:g}" for v in RECT)
    counts = {level: tiles_in_rect(level) for level in range(7)}
    # bytes: level L = count × (L+1) kB; level 5 has no tiles to sample and borrows level 4's or 6's
    budget = counts[6] * 7000 + counts[3] * 4000 + counts[2] * 3000 + counts[1] * 2000
    result = cli("plan", "--service", sized_server.url, "--levels", "1-6", "--aoi",
                 f"bbox:{rect}", "--policy", f"max-bytes:{budget}", "--json")
    assert result.code == 0, result.stderr
    plan = json.loads(result.stdout)
    assert [lv["level"] for lv in plan["levels"]] == [1, 2, 3, 6]
    decisions = {d["level"]: d for d in plan["decisions"]}
    assert f"{counts[6]:,} tiles × 7.0 KB sampled" in decisions[6]["reason"]
    tile_requests = [p for p in sized_server.requests if "/tile/" in p]
    by_level = {}
    for path in tile_requests:
        level = int(path.split("/tile/")[1].split("/")[0])
        by_level[level] = by_level.get(level, 0) + sized_server.requests[path]
    assert max(by_level.values()) <= 5  # a few samples per level, never the level
    assert set(by_level) <= {1, 2, 3, 4, 5, 6} and 6 in by_level


def test_plan_service_limits_notes_and_unknown_policy_options(cli, my_plugins, sized_server):
    result = cli("plan", "--service", sized_server.url, "--levels", "0-6",
                 "--policy", "service-limits", "--json")
    assert result.code == 0, result.stderr
    plan = json.loads(result.stdout)
    total = sum(4 ** level for level in range(7))
    assert f"service-limits: {total:,} tiles exceed the service's maxExportTilesCount 500; " \
        "that limits server-side exportTiles only (fit_export=true keeps the levels that fit)" \
        in plan["policies"]
    fit = cli("plan", "--service", sized_server.url, "--levels", "0-6",
              "--policy", "service-limits:fit_export=true", "--policy", "exclude:1", "--json")
    assert fit.code == 0, fit.stderr
    assert [lv["level"] for lv in json.loads(fit.stdout)["levels"]] == [0, 2, 3, 4]
    bad = cli("plan", "--service", sized_server.url, "--levels", "0-6",
              "--policy", "max-tiles:lots")
    assert bad.code == 2 and bad.stderr.count("\n") == 1 and "max-tiles" in bad.stderr


def test_plan_lists_levels_without_tiles_as_dropped_by_the_service(cli, my_plugins):
    scheme = web_mercator_scheme(6)
    with TileServer({}, service=service_json(scheme, minLOD=1, maxLOD=4)) as srv:
        result = cli("plan", "--service", srv.url, "--levels", "1-3", "--json")
    assert result.code == 0, result.stderr
    decisions = {d["level"]: d for d in json.loads(result.stdout)["decisions"]}
    assert decisions[0]["policy"] == "service" and decisions[6]["policy"] == "service"
    assert decisions[0]["reason"] == "dropped by the service: no tiles (levels with tiles: 1-4)"
    assert decisions[4]["policy"] == "levels" and decisions[2]["kept"]

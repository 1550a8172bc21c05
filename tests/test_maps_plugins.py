"""The map plugin kinds: both hooks work for a third-party plugin; URL forms of portal items; the
arcpy reader against a stand-in arcpy; the per-host schedule. (The built-ins' contract tests are
in test_contracts_builtin.py.)"""
from __future__ import annotations

import json
import threading
import time
from pathlib import Path


from cacheorch import hookimpl
from cacheorch.maps.hosts import group_by_host, host_of, run_by_host
from cacheorch.maps.interfaces import MapReader, MapWriter
from cacheorch.maps.model import MapDocument, MapLayer
from _maps import install_stand_in_arcpy
from cacheorch.plugins.maps_readers import ArcpyMapReader, portal_item

URL = "http://127.0.0.1:9/arcgis/rest/services/Topo/MapServer"


def test_portal_urls_users_paste() -> None:
    item = "0123456789abcdef0123456789abcdef"
    root = "https://org.maps.arcgis.com"
    for url in (f"{root}/home/item.html?id={item}", f"{root}/home/webmap/viewer.html?webmap={item}",
                f"{root}/apps/mapviewer/index.html?webmap={item}",
                f"{root}/sharing/rest/content/items/{item}",
                f"{root}/sharing/rest/content/items/{item}/data?f=json"):
        assert portal_item(url) == (root, item), url
    assert portal_item("https://host/gis/home/item.html?id=" + item) == ("https://host/gis", item)
    assert portal_item(f"{root}/home/item.html?id=short") is None
    assert portal_item(URL) is None


class _IniReader(MapReader):
    """A viewer app's own map config: one tiled layer per line, 'title = url'."""

    name = "viewer-ini"
    formats = "viewer config (.viewer)"

    @classmethod
    def accepts(cls, location: str) -> bool:
        return location.endswith(".viewer")

    def read(self, location, connection):
        lines = [ln.partition("=") for ln in Path(location).read_text().splitlines() if "=" in ln]
        return MapDocument("viewer", location, tuple(
            MapLayer(t.strip(), u.strip(), "operational", kind="tiled-map") for t, _, u in lines),
            format="viewer", path=location)


class _ListWriter(MapWriter):
    """Writes the exported files' names, one a line."""

    name = "list-writer"

    @classmethod
    def accepts(cls, document):
        return document.format == "viewer"

    def write(self, document, outputs, folder):
        target = folder / "files.txt"
        target.write_text("\n".join(p.name for p in outputs.values()))
        return target


class _Plugin:
    @hookimpl
    def cacheorch_register_map_readers(self):
        return [_IniReader]

    @hookimpl
    def cacheorch_register_map_writers(self):
        return [_ListWriter]


def _plugins_factory():
    from cacheorch.pluginmanager import make_plugins
    return make_plugins(load_entrypoints=False, extra=[_Plugin()])


def _run_with_plugin(tmp_path: Path, *args: str) -> tuple[int, str, str]:
    """``cacheorch ARGS`` with the third-party plugin, against a loopback Topo in a .viewer map."""
    import contextlib
    import io

    from _maps import MapServices
    from cacheorch.cli import main
    with MapServices() as svc:
        (tmp_path / "field.viewer").write_text(f"Topo = {svc.url('Topo')}\n")
        out, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = main([args[0], "--map", str(tmp_path / "field.viewer"), *args[1:]],
                         plugins_factory=_plugins_factory)
    return code, out.getvalue(), err.getvalue()


def test_hook_cacheorch_register_map_readers(tmp_path: Path) -> None:
    """A third-party reader is used for its format, through plan --map."""
    code, out, err = _run_with_plugin(tmp_path, "plan", "--levels", "0-1", "--json")
    assert code == 0, err
    data = json.loads(out)
    assert data["map"]["format"] == "viewer" and data["layers"][0]["tiles_planned"] == 5


def test_hook_cacheorch_register_map_writers(tmp_path: Path) -> None:
    """A third-party writer's offline copy is written after run --map and listed in map.json."""
    code, _, err = _run_with_plugin(tmp_path, "run", "--levels", "0", "-o", str(tmp_path / "out"))
    assert code == 0, err
    assert (tmp_path / "out" / "files.txt").read_text() == "Topo.tpkx"
    manifest = json.loads((tmp_path / "out" / "map.json").read_text())
    assert manifest["offline_copies"] == ["files.txt"]


def test_arcpy_reader_with_a_stand_in_arcpy(tmp_path: Path, monkeypatch) -> None:
    """Where arcpy exists, .aprx layers are read from their CIM (a stand-in answers)."""
    install_stand_in_arcpy(monkeypatch, URL)
    doc = ArcpyMapReader().read(str(tmp_path / "p.aprx"), None)  # type: ignore[arg-type]
    assert [(lyr.title, lyr.role, lyr.kind, lyr.url, lyr.visibility, lyr.opacity)
            for lyr in doc.layers] == [("Roads", "operational", "tiled-map", URL, True, 0.75),
                                       ("Topo", "basemap", "tiled-map", URL, False, 0.75)]


def test_same_host_runs_one_after_another_hosts_side_by_side() -> None:
    active: dict[str, int] = {}
    peak: dict[str, int] = {}
    overall = [0, 0]
    lock = threading.Lock()

    def work(item: tuple[str, int]) -> None:
        host = item[0]
        with lock:
            active[host] = active.get(host, 0) + 1
            peak[host] = max(peak.get(host, 0), active[host])
            overall[0] += 1
            overall[1] = max(overall[1], overall[0])
        time.sleep(0.05)
        with lock:
            active[host] -= 1
            overall[0] -= 1
    items = [("a", 1), ("b", 1), ("a", 2), ("c", 1), ("a", 3)]
    run_by_host(items, lambda item: [item[0]], work)
    assert peak == {"a": 1, "b": 1, "c": 1} and overall[1] == 3
    assert host_of("HTTP://Host:8080/arcgis/rest") == "http://host:8080"
    assert host_of("/data/cache") == "local"
    # layers sharing any host (a hosted layer's tileServers) are one group
    layers = [("a", ["h1", "t1"]), ("b", ["h2", "t2"]), ("c", ["h3", "t1"]), ("d", ["h4"])]
    assert group_by_host(layers, lambda item: item[1]) == [[layers[0], layers[2]], [layers[1]],
                                                         [layers[3]]]

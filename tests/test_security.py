"""Security: packages that climb out with ``..`` or absolute names, XML with a DOCTYPE (external
entities, billion laughs), output names made from service names, and tokens that never reach a
log, the catalog, ``--json``, an error message or an output file.
"""
from __future__ import annotations

import json
import os
import shutil
import sqlite3
import subprocess
import sys
import zipfile
from pathlib import Path
from types import SimpleNamespace

import pytest

from _gdal import colour_of, solid_png
from _tileserver import TileServer
from _tiles import mercator_service_json
from cacheorch.errors import FormatError
from cacheorch.formats.cache import open_cache
from cacheorch.runner import default_output
from cacheorch.tiling import web_mercator_scheme

TOKEN = "S3CRET-t0ken-d0-not-leak-4f1c9e"

# -- packages -------------------------------------------------------------------------------------


def _repack(source: Path, target: Path, extra: dict[str, bytes] | None = None,
            replace: dict[str, bytes] | None = None) -> Path:
    """A copy of the package ``source`` with members added or replaced (names kept as given)."""
    replace = {k.lower(): v for k, v in (replace or {}).items()}
    with zipfile.ZipFile(source) as src, zipfile.ZipFile(target, "w", zipfile.ZIP_STORED) as dst:
        for info in src.infolist():
            data = replace.get(info.filename.lower(), None)
            dst.writestr(info, src.read(info) if data is None else data)
        for name, data in (extra or {}).items():
            dst.writestr(zipfile.ZipInfo(name), data)
    return target


@pytest.mark.parametrize("name", ["../../outside.bundle", "tile/../../x.txt", "/etc/cron.d/x",
                                  "C:/Windows/x.dll", "..\\..\\evil.txt"])
def test_package_members_climbing_out_are_refused(fixtures: Path, tmp_path: Path, cli,
                                                  name: str) -> None:
    evil = _repack(fixtures / "esri_tpkx_sample" / "Usa.tpkx", tmp_path / "evil.tpkx",
                   extra={name: b"payload"})
    with pytest.raises(FormatError, match="refusing the package.*absolute path or '..'"):
        open_cache(evil)
    result = cli("scales", str(evil))
    assert result.code == 2 and "refusing the package" in result.stderr
    assert "Traceback" not in result.stderr and result.stderr.count("\n") == 1
    assert not (tmp_path.parent / "outside.bundle").exists()


def test_tpk_v1_with_a_climbing_member_is_refused(fixtures: Path, tmp_path: Path) -> None:
    evil = _repack(fixtures / "tpk_v1" / "states_filled.tpk", tmp_path / "evil.tpk",
                   extra={"v101/../../../x": b"payload"})
    with pytest.raises(FormatError, match="refusing the package"):
        open_cache(evil)


_XXE = b'<?xml version="1.0"?>\n<!DOCTYPE x [<!ENTITY e SYSTEM "file:///etc/passwd">]>\n'
_LAUGHS = (b'<?xml version="1.0"?>\n<!DOCTYPE lolz [<!ENTITY lol "lol">'
           + b"".join(b'<!ENTITY lol%d "%s">' % (i, (b"&lol%d;" % (i - 1) if i > 1 else b"&lol;") * 10)
                      for i in range(1, 10)) + b"]>\n")


@pytest.mark.parametrize("prolog", [_XXE, _LAUGHS], ids=["external-entity", "billion-laughs"])
def test_conf_xml_with_a_doctype_is_refused_in_folders_and_packages(fixtures: Path,
                                                                    tmp_path: Path,
                                                                    prolog: bytes) -> None:
    folder = tmp_path / "cache"
    shutil.copytree(fixtures / "esri_compactcache_sample", folder)
    conf = folder / "conf.xml"
    body = conf.read_bytes().split(b"?>", 1)[-1]
    conf.write_bytes(prolog + body)
    with pytest.raises(FormatError, match="DOCTYPE"):
        open_cache(folder)
    with zipfile.ZipFile(fixtures / "tpk_v1" / "states_filled.tpk") as z:
        conf_name = next(n for n in z.namelist() if n.lower().endswith("conf.xml"))
        original = z.read(conf_name)
    evil = _repack(fixtures / "tpk_v1" / "states_filled.tpk", tmp_path / "evil.tpk",
                   replace={conf_name: prolog + original.split(b"?>", 1)[-1]})
    with pytest.raises(FormatError, match="DOCTYPE"):
        open_cache(evil)


def test_no_module_parses_xml_with_a_resolving_parser() -> None:
    """Every XML parse goes through confxml's guarded parser (stdlib, DOCTYPE refused)."""
    root = Path(__file__).resolve().parents[1]
    offenders = []
    for path in [*(root / "cacheorch").rglob("*.py"), *(root / "plugins").rglob("*.py")]:
        text = path.read_text("utf-8")
        if path.name == "confxml.py":
            continue
        for risky in ("ET.fromstring", "ET.parse", "etree.parse", "minidom", "xml.sax.parse",
                      "lxml", "XMLParser("):
            if risky in text:
                offenders.append(f"{path.name}: {risky}")
    assert offenders == []


# -- output names ---------------------------------------------------------------------------------

@pytest.mark.parametrize("name,expected", [
    ("../../etc/passwd", "etc_passwd.tpkx"),
    ("/abs/path", "abs_path.tpkx"),
    ("..\\..\\windows\\system32", "windows_system32.tpkx"),
    ("World Street Map", "World_Street_Map.tpkx"),
    ("..", "cache.tpkx"),
    ("", "MapServer.tpkx"),  # no name: the URL's last part
    ("a\x00b\nc", "a_b_c.tpkx"),
    ("Straßen/Карта", "Stra_en.tpkx"),
])
def test_default_output_names_are_sanitised(name: str, expected: str) -> None:
    plan = SimpleNamespace(
        service=SimpleNamespace(name=name, location="http://h/arcgis/rest/services/Test/MapServer"),
        exporter=SimpleNamespace(extension=".tpkx"))
    out = default_output(plan)  # type: ignore[arg-type]
    assert str(out) == expected
    assert len(out.parts) == 1 and not out.is_absolute() and ".." not in out.parts


def test_a_hostile_service_name_cannot_place_the_output_elsewhere(cli, tmp_path: Path) -> None:
    service = _service() | {"mapName": "../../../escaped", "tileInfo": web_mercator_scheme(1).to_json()}
    tiles = {(1, r, c): solid_png(colour_of(1, r, c)) for r in range(2) for c in range(2)}
    work = tmp_path / "a" / "b" / "c"
    work.mkdir(parents=True)
    os.chdir(work)
    with TileServer(tiles, name="..%2F..%2Fescaped", service=service) as srv:
        result = cli("run", "--service", srv.url, "--levels", "1", "--json")
    assert result.code == 0, result.stderr
    output = Path(json.loads(result.stdout)["output"])
    assert output.parent == work and output.is_file()
    assert not list(tmp_path.rglob("escaped*")) or all(p.parent == work
                                                       for p in tmp_path.rglob("escaped*"))


# -- tokens ---------------------------------------------------------------------------------------

def _service() -> dict:
    return mercator_service_json(3)


def _everything(home: Path, catalog: Path) -> dict[str, bytes]:
    """Every byte a user could see afterwards: files under ``home`` and a dump of the catalog."""
    seen: dict[str, bytes] = {}
    for path in home.rglob("*"):
        if path.is_file():
            seen[str(path)] = path.read_bytes()
            if path.suffix in (".tpkx", ".tpk"):
                with zipfile.ZipFile(path) as z:  # stored members, but check inside anyway
                    for name in z.namelist():
                        seen[f"{path}!{name}"] = z.read(name)
    con = sqlite3.connect(catalog)
    try:
        seen["catalog dump"] = "\n".join(con.iterdump()).encode()
    finally:
        con.close()
    return seen


def _run(args: list[str], home: Path, env: dict[str, str]) -> subprocess.CompletedProcess:
    log = home / "debug.log"
    with open(log, "ab") as err:
        return subprocess.run([sys.executable, "-m", "cacheorch", "-vv", *args], cwd=home, env=env,
                              stdout=subprocess.PIPE, stderr=err)


def test_a_given_token_is_nowhere_after_a_job(tmp_path: Path) -> None:
    tiles = {(3, r, c): solid_png(colour_of(3, r, c)) for r in range(8) for c in range(8)}
    home = tmp_path / "home"
    home.mkdir()
    env = dict(os.environ, CACHEORCH_CATALOG=str(home / "catalog.sqlite"))
    # the server misbehaves in ways that put URLs and messages into errors and debug logs,
    # one of them echoing the token back in an ArcGIS error
    with TileServer(tiles, service=_service(), fail_always={(3, 0, 0)}, fail_once={(3, 1, 1)},
                    json_error={(3, 2, 2): (498, f"Invalid token {TOKEN}")},
                    status={(3, 3, 3): (403, f'{{"error": {{"code": 403, "message": '
                                              f'"token={TOKEN} not allowed"}}}}'.encode())}) as srv:
        first = _run(["run", "--service", srv.url, "--levels", "3", "--token", TOKEN,
                      "--output", str(home / "out.tpkx"), "--json"], home, env)
        assert first.returncode == 1  # partial: three tiles failed
        job_id = json.loads(first.stdout)["job_id"]
        shown = _run(["job", str(job_id), "--json"], home, env)
        srv.fail_always.clear()
        srv.json_error.clear()
        srv.status.clear()
        second = _run(["resume", str(job_id), "--token", TOKEN, "--json"], home, env)
        assert second.returncode == 0
        # the token really was sent: redaction, not absence, is what is tested
        assert any(query.get("token") == [TOKEN] for _, query, _ in srv.log)
    log = (home / "debug.log").read_bytes()
    assert b"DEBUG" in log and b"retrying" in log  # debug logging was on and had URLs to log
    assert b"***" in log or b"Invalid token" in shown.stdout
    seen = _everything(home, home / "catalog.sqlite")
    seen |= {"stdout run": first.stdout, "stdout job": shown.stdout, "stdout resume": second.stdout}
    leaks = [where for where, data in seen.items() if TOKEN.encode() in data]
    assert leaks == []
    assert b"Invalid token ***" in shown.stdout  # the echoed message kept, the secret masked


def test_generated_tokens_and_the_password_are_nowhere_after_a_job(tmp_path: Path) -> None:
    from test_tokens import PASSWORD, USER, SecureSite
    tiles = {(lv, r, c): solid_png(colour_of(lv, r, c)) for lv in range(4) for r in range(2 ** lv)
             for c in range(2 ** lv)}
    site = SecureSite(web_mercator_scheme(5), tiles, uses=25)
    home = tmp_path / "home"
    home.mkdir()
    env = dict(os.environ, CACHEORCH_CATALOG=str(home / "catalog.sqlite"),
               ARCGIS_USERNAME=USER, ARCGIS_PASSWORD=PASSWORD)
    try:
        result = _run(["run", "--service", site.url, "--levels", "0-3", "--aoi", "0-3=extent",
                       "--exporter", "compact-v2", "--output", str(home / "out"), "--json"],
                      home, env)
    finally:
        site.close()
    assert result.returncode == 0, (home / "debug.log").read_text()
    assert len(site.issued) >= 3  # tokens expired and were renewed during the job
    seen = _everything(home, home / "catalog.sqlite") | {"stdout": result.stdout}
    secrets = [PASSWORD, *site.issued]
    leaks = [(where, s) for where, data in seen.items() for s in secrets if s.encode() in data]
    assert leaks == []

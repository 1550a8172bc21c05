"""Catalog migrations: blank to head, models in sync, round trip, one head, newer files refused."""
from __future__ import annotations

import multiprocessing
import os
import runpy
import shutil
import sqlite3
import subprocess
import sys
from importlib.resources import files
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import inspect

from cacheorch.catalog import Catalog, current, downgrade, head, upgrade
from cacheorch.catalog.engine import make_engine
from cacheorch.catalog.models import Base
from cacheorch.errors import CatalogError, CatalogTooNewError

ROOT = Path(__file__).resolve().parent.parent
MIGRATIONS = Path(str(files("cacheorch.migrations")))

EXPECTED_COLUMNS = {
    "services": {"id", "url", "fingerprint", "name", "kind", "scheme", "created"},
    "jobs": {"id", "name", "service_id", "service_url", "exporter", "output", "parameters",
             "status", "created_at", "started_at", "finished_at", "error", "tiles_planned",
             "tiles_written", "tiles_missing", "tiles_failed", "bytes", "pid", "map_id"},
    "job_levels": {"id", "job_id", "level", "scale", "resolution", "area_name", "tiles_planned",
                   "tiles_written", "tiles_missing", "tiles_failed", "bytes"},
    "job_bundles": {"id", "job_id", "level", "bundle_row", "bundle_col", "state",
                    "tiles_written", "tiles_missing", "tiles_failed", "bytes", "finished_at"},
    "job_tile_errors": {"id", "job_id", "bundle_id", "level", "row", "col", "error"},
    "job_events": {"id", "job_id", "created", "kind", "message"},
    "job_messages": {"id", "job_id", "created", "source", "kind", "message"},
    "maps": {"id", "title", "source", "format", "output", "parameters", "layers", "status",
             "created_at", "finished_at"},
}


def _tables(path: Path) -> dict[str, set[str]]:
    con = sqlite3.connect(path)
    try:
        names = [r[0] for r in con.execute(
            "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'")]
        return {n: {r[1] for r in con.execute(f"PRAGMA table_info({n})")} for n in names}
    finally:
        con.close()


def _revision_in_file(path: Path) -> list[str]:
    con = sqlite3.connect(path)
    try:
        return [r[0] for r in con.execute("SELECT version_num FROM alembic_version")]
    finally:
        con.close()


def test_migrate_blank(tmp_path: Path) -> None:
    path = tmp_path / "blank.sqlite"
    assert current(path) is None and not path.exists()
    assert upgrade(path) == (None, head())
    tables = _tables(path)
    assert tables.pop("alembic_version") == {"version_num"}
    assert tables == EXPECTED_COLUMNS
    assert _revision_in_file(path) == [head()]
    assert upgrade(path) == (head(), head())  # a second run does nothing


def test_unique_keys_that_resume_relies_on(tmp_path: Path) -> None:
    path = tmp_path / "c.sqlite"
    upgrade(path)
    engine = make_engine(path)
    try:
        with engine.connect() as conn:
            insp = inspect(conn)
            uniques = {t: [set(u["column_names"]) for u in insp.get_unique_constraints(t)]
                       for t in ("job_levels", "job_bundles", "services")}
            fks = {fk["referred_table"] for fk in insp.get_foreign_keys("job_tile_errors")}
    finally:
        engine.dispose()
    assert {"job_id", "level"} in uniques["job_levels"]
    assert {"job_id", "level", "bundle_row", "bundle_col"} in uniques["job_bundles"]
    assert {"url", "fingerprint"} in uniques["services"]
    assert fks == {"jobs", "job_bundles"}


def test_models_match_migrations(tmp_path: Path) -> None:
    path = tmp_path / "c.sqlite"
    upgrade(path)
    engine = make_engine(path)
    try:
        with engine.connect() as conn:
            diff = compare_metadata(MigrationContext.configure(conn), Base.metadata)
    finally:
        engine.dispose()
    assert diff == []


def test_drift_is_detected(tmp_path: Path) -> None:
    """The comparison above can fail: a column the models lack shows up as a difference."""
    path = tmp_path / "c.sqlite"
    upgrade(path)
    con = sqlite3.connect(path)
    con.execute("ALTER TABLE jobs ADD COLUMN surprise INTEGER")
    con.commit()
    con.close()
    engine = make_engine(path)
    try:
        with engine.connect() as conn:
            diff = compare_metadata(MigrationContext.configure(conn), Base.metadata)
    finally:
        engine.dispose()
    assert [d[0] for d in diff] == ["remove_column"]


def test_upgrade_downgrade_roundtrip(tmp_path: Path) -> None:
    path = tmp_path / "c.sqlite"
    upgrade(path)
    downgrade(path, "base")
    assert set(_tables(path)) == {"alembic_version"}
    assert current(path) is None
    assert upgrade(path) == (None, head())
    assert _tables(path).keys() - {"alembic_version"} == EXPECTED_COLUMNS.keys()
    with Catalog.open(path) as catalog:
        assert catalog.current_revision() == head()


def test_single_head() -> None:
    script = ScriptDirectory(str(MIGRATIONS))
    assert len(script.get_heads()) == 1
    # readable sequential ids: each file is named after its revision
    for rev in script.walk_revisions():
        assert Path(rev.path).name.startswith(f"{rev.revision}_")


def test_wal_and_pragmas_on_every_connection(tmp_path: Path) -> None:
    path = tmp_path / "c.sqlite"
    seen: list[tuple[int, int, int]] = []

    def on_connect(dbapi_connection: sqlite3.Connection) -> None:
        seen.append(tuple(dbapi_connection.execute(f"PRAGMA {p}").fetchone()[0]
                          for p in ("foreign_keys", "busy_timeout", "synchronous")))

    with Catalog.open(path, on_connect=on_connect) as catalog:
        catalog.list_jobs()
    assert seen and set(seen) == {(1, 30_000, 1)}  # synchronous 1 = NORMAL
    con = sqlite3.connect(path)  # a fresh connection sees the persistent journal mode
    try:
        assert con.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    finally:
        con.close()


def test_unknown_revision_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "c.sqlite"
    upgrade(path)
    con = sqlite3.connect(path)
    con.execute("UPDATE alembic_version SET version_num = 'f00d'")
    con.commit()
    con.close()
    with pytest.raises(CatalogTooNewError, match="f00d.*upgrade cacheorch") as info:
        Catalog.open(path)
    assert "\n" not in str(info.value)
    with pytest.raises(CatalogTooNewError):
        upgrade(path)
    assert _revision_in_file(path) == ["f00d"]  # left untouched


def _with_revision_0002(tmp_path: Path) -> Path:
    """A copy of the migrations with one more revision, as the next cacheorch would ship."""
    copy = tmp_path / "migrations"
    shutil.copytree(MIGRATIONS, copy, ignore=shutil.ignore_patterns("__pycache__"))
    (copy / "versions" / "9999_extra.py").write_text(
        '"""Test-only revision."""\n'
        "import sqlalchemy as sa\nfrom alembic import op\n\n"
        'revision = "9999"\ndown_revision = "' + head() + '"\nbranch_labels = None\ndepends_on = None\n\n\n'
        "def upgrade():\n"
        '    with op.batch_alter_table("jobs") as batch:\n'
        '        batch.add_column(sa.Column("note", sa.Text(), nullable=True))\n\n\n'
        "def downgrade():\n"
        '    with op.batch_alter_table("jobs") as batch:\n'
        '        batch.drop_column("note")\n')
    return copy


def test_older_catalog_is_backed_up_then_upgraded(tmp_path: Path) -> None:
    path = tmp_path / "c.sqlite"
    with Catalog.open(path) as catalog:
        sid = catalog.ensure_service(url="http://127.0.0.1/MapServer", name="s", kind="map",
                                     fingerprint="f", scheme={})
        job = catalog.create_job(name="old", service_id=sid, service_url="http://127.0.0.1/",
                                 exporter="tpkx", output="o", parameters={}, levels=[])
    newer = _with_revision_0002(tmp_path)
    assert upgrade(path, script_location=str(newer)) == (head(), "9999")
    backups = list(tmp_path.glob(f"c.sqlite.{head()}-*.bak"))
    assert len(backups) == 1
    assert _revision_in_file(backups[0]) == [head()]
    assert "note" not in _tables(backups[0])["jobs"]
    assert "note" in _tables(path)["jobs"]
    con = sqlite3.connect(path)
    assert con.execute("SELECT name FROM jobs WHERE id = ?", (job,)).fetchone() == ("old",)
    con.close()
    # ... and this cacheorch, which only knows up to its head, now refuses the file
    with pytest.raises(CatalogTooNewError, match="9999"):
        Catalog.open(path)


def test_not_a_catalog(tmp_path: Path) -> None:
    foreign = tmp_path / "other.sqlite"
    con = sqlite3.connect(foreign)
    con.execute("CREATE TABLE jobs (x)")
    con.commit()
    con.close()
    with pytest.raises(CatalogError, match="not a cacheorch catalog"):
        Catalog.open(foreign)
    garbage = tmp_path / "garbage.sqlite"
    garbage.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 2048)
    with pytest.raises(CatalogError, match="garbage.sqlite"):
        Catalog.open(garbage)
    with pytest.raises(CatalogError, match="directory"):
        Catalog.open(tmp_path)


def test_alembic_command_line_from_repo_root(tmp_path: Path) -> None:
    path = tmp_path / "cli.sqlite"
    env = {**os.environ, "CACHEORCH_CATALOG": str(path)}
    alembic = [sys.executable, "-m", "alembic"]
    heads = subprocess.run([*alembic, "heads"], cwd=ROOT, env=env, capture_output=True,
                           text=True, timeout=60)
    assert heads.returncode == 0, heads.stderr
    assert f"{head()} (head)" in heads.stdout
    up = subprocess.run([*alembic, "upgrade", "head"], cwd=ROOT, env=env, capture_output=True,
                        text=True, timeout=60)
    assert up.returncode == 0, up.stderr
    assert current(path) == head()
    check = subprocess.run([*alembic, "check"], cwd=ROOT, env=env, capture_output=True,
                           text=True, timeout=60)
    assert check.returncode == 0, check.stderr + check.stdout


# A worker run in a spawned process with runpy, so it needs no importable test module.
_OPEN_WORKER = '''
from cacheorch.catalog import Catalog
try:
    barrier.wait(timeout=60)
    with Catalog.open(path) as catalog:
        sid = catalog.ensure_service(url="http://127.0.0.1/MapServer", name="s", kind="map",
                                     fingerprint="f", scheme={})
        catalog.create_job(name=name, service_id=sid, service_url="http://127.0.0.1/",
                           exporter="tpkx", output="o", parameters={}, levels=[])
        results.put((name, catalog.current_revision()))
except BaseException as exc:
    results.put((name, f"error: {type(exc).__name__}: {exc}"))
'''


def test_two_processes_open_a_new_catalog_at_once(tmp_path: Path) -> None:
    path = tmp_path / "new" / "c.sqlite"
    worker = tmp_path / "open_worker.py"
    worker.write_text(_OPEN_WORKER)
    ctx = multiprocessing.get_context("spawn")
    barrier, results = ctx.Barrier(2), ctx.Queue()
    procs = [ctx.Process(target=runpy.run_path, args=(str(worker),), kwargs={"init_globals": {
        "path": str(path), "name": f"p{i}", "barrier": barrier, "results": results}})
        for i in range(2)]
    for proc in procs:
        proc.start()
    got = dict(results.get(timeout=120) for _ in procs)
    for proc in procs:
        proc.join(timeout=60)
    assert got == {f"p{i}": head() for i in range(2)}
    assert _revision_in_file(path) == [head()]
    con = sqlite3.connect(path)
    try:
        assert con.execute("SELECT count(*) FROM services").fetchone() == (1,)
        assert sorted(r[0] for r in con.execute("SELECT name FROM jobs")) == ["p0", "p1"]
    finally:
        con.close()


def test_shipped_head_without_alembic_matches_alembic() -> None:
    """The fast check that skips Alembic on open must agree with Alembic's own head."""
    from cacheorch.catalog.migrate import head
    from cacheorch.catalog.revision import shipped_head
    assert shipped_head() == head()


def test_opening_a_current_catalog_does_not_import_alembic(tmp_path) -> None:
    import subprocess
    import sys
    path = tmp_path / "c.sqlite"
    from cacheorch.catalog import Catalog
    Catalog.open(path).close()
    code = ("import sys; from cacheorch.catalog import Catalog; Catalog.open(sys.argv[1]).close(); "
            "print('alembic' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True,
                         check=True)
    assert out.stdout.strip() == "False"


def test_fresh_catalog_equals_migrated(tmp_path: Path) -> None:
    """A new catalog is created from the models and stamped (no Alembic); it must be exactly what
    the migrations build: same head, no difference Alembic can see, same tables and columns."""
    import subprocess
    import sys
    fresh, migrated = tmp_path / "fresh.sqlite", tmp_path / "migrated.sqlite"
    code = ("import sys; from cacheorch.catalog import Catalog; Catalog.open(sys.argv[1]).close(); "
            "print('alembic' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code, str(fresh)], capture_output=True, text=True,
                         check=True)
    assert out.stdout.strip() == "False"  # created without importing Alembic
    upgrade(migrated)
    assert _revision_in_file(fresh) == _revision_in_file(migrated) == [head()]
    assert _tables(fresh) == _tables(migrated)
    engine = make_engine(fresh)
    try:
        with engine.connect() as conn:
            assert compare_metadata(MigrationContext.configure(conn), Base.metadata) == []
    finally:
        engine.dispose()
    assert current(fresh) == head()

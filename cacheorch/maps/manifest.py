"""``map.json``: the map's layers in order, each with its role, title, source, output file, levels,
tile counts and status, so the folder explains itself and ``verify DIR`` knows what to check.

Outputs are named relative to the folder: the folder can be moved or carried to the field whole.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cacheorch.connection import redact_url
from cacheorch.errors import MapError

if TYPE_CHECKING:
    from cacheorch.maps.plan import LayerPlan, MapPlan
    from cacheorch.maps.run import LayerRun

__all__ = ["MANIFEST", "manifest_layer", "write_manifest", "read_manifest"]

MANIFEST = "map.json"
_LEVEL_KEYS = ("level", "scale", "resolution", "tiles_planned", "tiles_written", "tiles_missing",
               "tiles_failed", "bytes")
_TOTALS = ("tiles_planned", "tiles_written", "tiles_missing", "tiles_failed", "bytes")


def _relative(path: Path, folder: Path) -> str:
    try:
        return Path(os.path.relpath(path, folder)).as_posix()
    except ValueError:  # another drive on Windows
        return str(path)


def manifest_layer(lp: LayerPlan, folder: Path, run: LayerRun | None = None,
                   job: dict[str, Any] | None = None) -> dict[str, Any]:
    """One layer's manifest entry (before the run: planned; after: with its job's totals)."""
    layer = lp.layer
    entry: dict[str, Any] = {
        "index": lp.index, "title": layer.title, "role": layer.role,
        "url": redact_url(layer.url) if layer.url else layer.url,
        "visibility": layer.visibility, "opacity": layer.opacity, "group": list(layer.group),
        "kind": layer.kind, "type": layer.type, "ref": layer.ref, "status": lp.status,
    }
    if lp.plan is None:
        entry["reason"] = lp.reason
        return entry
    entry["output"] = _relative(lp.output, folder) if lp.output is not None else None
    entry["exporter"] = lp.plan.spec.exporter.name
    entry["levels"] = [lv.to_json() for lv in lp.plan.levels]
    entry["tiles_planned"] = lp.plan.tiles
    if run is not None:
        entry["job_id"] = run.job_id
        entry["status"] = job["status"] if job is not None else run.status
        if run.message and entry["status"] != "completed":
            entry["error"] = run.message
    if job is not None:
        entry.update({k: job.get(k) for k in _TOTALS})
        entry["levels"] = [{k: lv.get(k) for k in _LEVEL_KEYS} for lv in job.get("levels", ())]
    return entry


def write_manifest(folder: Path, map_plan: MapPlan, map_id: int, status: str,
                   layers: list[dict[str, Any]], copies: list[Path]) -> Path:
    """Write ``folder/map.json`` (atomically: a crash leaves the previous one)."""
    document = map_plan.document
    data = {"title": document.title, "source": document.source, "format": document.format,
            "map_id": f"m{map_id}", "status": status,
            "offline_copies": [_relative(p, folder) for p in copies], "layers": layers}
    path = folder / MANIFEST
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(data, indent=2, ensure_ascii=False), encoding="utf-8")
    os.replace(tmp, path)
    return path


def read_manifest(folder: Path) -> dict[str, Any]:
    """The manifest of a map folder.

    :raises MapError: no readable ``map.json`` there.
    """
    path = Path(folder) / MANIFEST
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise MapError(f"{folder}: no {MANIFEST} (not a map folder written by run --map)") from None
    except (OSError, ValueError) as exc:
        raise MapError(f"{path}: unreadable manifest: {exc}") from None
    if not isinstance(data, dict) or not isinstance(data.get("layers"), list):
        raise MapError(f"{path}: not a map manifest (no layers list)")
    return data

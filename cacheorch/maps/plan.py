"""Plan a map: per layer, either a :class:`~cacheorch.jobplan.JobPlan` or the reason it is not exported.

Each exported layer is an ordinary job (``service`` = the layer's URL) built from the same flags
and ``[job:NAME]`` section, so every policy, area and exporter behaves exactly as for one
service. Per-layer overrides live in the job section as ``layer.TITLE.KEY = VALUE`` (keys:
levels, scales, policy, aoi, exporter, skip). Levels are each layer's own; scales are how to ask
for the same detail across layers whose schemes differ.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cacheorch.config import Config
from cacheorch.errors import (
    AreaError, CacheorchError, ConfigError, LevelError, MapError, PolicyError, SchemeError,
    ServiceError, UsageError,
)
from cacheorch.jobplan import JobPlan, make_plan
from cacheorch.jobspec import DEFAULT_EXPORTER, JobSpec, job_spec_from
from cacheorch.maps.classify import (
    VECTOR_EXPORTER, layer_exporter, layer_service, mbtiles_cannot_hold, service_skip_reason,
    skip_reason,
)
from cacheorch.maps.model import MapDocument, MapLayer
from cacheorch.options import split_plugin_spec

if TYPE_CHECKING:
    from cacheorch.connection import Connection
    from cacheorch.pluginmanager import Plugins

__all__ = ["LayerPlan", "MapPlan", "plan_map", "file_safe_names", "LAYER_KEYS",
           "DEFAULT_QGIS_EXPORTER"]

#: Keys a ``layer.TITLE.KEY`` override may set.
LAYER_KEYS = ("levels", "scales", "policy", "aoi", "exporter", "skip")
#: A QGIS project's offline copy must open in QGIS, whose GDAL reads .tpkx only from 3.8: its
#: layers go to GeoPackage unless an exporter is named.
DEFAULT_QGIS_EXPORTER = "gpkg"
_YES = {"1", "true", "yes", "on"}


@dataclass(frozen=True)
class LayerPlan:
    """One layer of the map and what will happen to it.

    ``status`` is ``planned`` (``plan`` holds the job), ``skipped`` (``reason`` says why) or
    ``failed`` (its service could not be read: ``reason`` holds the error). ``spec`` is the
    layer's job as asked for (planned and failed layers), kept in the catalog so that ``resume``
    can start the layers a map never reached.
    """

    index: int
    layer: MapLayer
    status: str
    plan: JobPlan | None = None
    reason: str | None = None
    output: Path | None = None
    spec: JobSpec | None = None


@dataclass(frozen=True)
class MapPlan:
    """A planned map: the document, its output folder and one :class:`LayerPlan` per layer."""

    document: MapDocument
    output: Path
    layers: tuple[LayerPlan, ...]
    parameters: dict[str, Any]

    @property
    def planned(self) -> list[LayerPlan]:
        return [lp for lp in self.layers if lp.status == "planned"]

    def map_json(self) -> dict[str, Any]:
        doc = self.document
        return {"title": doc.title, "source": doc.source, "format": doc.format,
                "output": str(self.output), "layers": len(self.layers),
                "exported": len(self.planned),
                "skipped": sum(lp.status == "skipped" for lp in self.layers)}


def file_safe_names(titles: list[str]) -> list[str]:
    """File-safe, unique (case-insensitively) names for ``titles``, in order."""
    used: set[str] = set()
    out = []
    for title in titles:
        base = re.sub(r"[^\w.-]+", "_", title, flags=re.UNICODE).strip("._") or "layer"
        base = base[:80]
        name, n = base, 2
        while name.lower() in used:
            name, n = f"{base}-{n}", n + 1
        used.add(name.lower())
        out.append(name)
    return out


def _overrides(section: dict[str, str], document: MapDocument, where: str
               ) -> dict[str, dict[str, str]]:
    """``layer.TITLE.KEY`` keys of the job section, by layer title."""
    titles = {layer.title for layer in document.layers}
    found: dict[str, dict[str, str]] = {}
    for key, value in section.items():
        if not key.startswith("layer."):
            continue
        title, _, name = key[len("layer."):].rpartition(".")
        if name not in LAYER_KEYS or not title:
            raise ConfigError(f"{where} {key}: expected layer.TITLE.KEY with KEY one of "
                              f"{', '.join(LAYER_KEYS)}")
        if title not in titles:
            raise ConfigError(f"{where} {key}: the map has no layer {title!r} (layers: "
                              f"{', '.join(sorted(titles))})")
        found.setdefault(title, {})[name] = value
    return found


def _nothing_to_export(document: MapDocument, reasons: dict[int, str | None]) -> MapError:
    found = ", ".join(f"{layer.title} ({reasons[i]})" for i, layer in enumerate(document.layers))
    return MapError(f"{document.source}: no cached tiled layer to export; found "
                    f"{len(document.layers)} layer(s): {found or 'none'}")


def plan_map(plugins: Plugins, config: Config, job_name: str | None, flags: dict[str, Any],
             document: MapDocument, connection: Connection, *, fetching: bool = True) -> MapPlan:
    """Classify every layer, then plan each exported one as a job of its own.

    :param flags: the command line's job flags (``output`` is the map's folder).
    :raises MapError: no layer of the map is a cached tiled layer (the line lists what was found).
    :raises CacheorchError: bad flags or config (exit 2), before anything is written.
    """
    section = dict(config.job(job_name)) if job_name else {}
    where = config.where(f"job:{job_name}") if job_name else "command line"
    overrides = _overrides(section, document, where)
    base = {k: v for k, v in section.items() if k != "map" and not k.startswith("layer.")}
    layer_config = replace(config, jobs={**config.jobs, job_name: base}) if job_name else config
    output_value = flags.get("output") or base.get("output")
    if output_value and base.get("output") and not flags.get("output"):
        output_value = config.resolve_path(output_value)
    folder = Path(output_value or file_safe_names([document.title])[0])
    default_exporter = flags.get("exporter") or base.get("exporter") or \
        (DEFAULT_QGIS_EXPORTER if document.format == "qgis" else DEFAULT_EXPORTER)

    reasons = {i: skip_reason(layer) for i, layer in enumerate(document.layers)}
    for i, layer in enumerate(document.layers):
        if reasons[i] is None and overrides.get(layer.title, {}).get("skip", "").lower() in _YES:
            reasons[i] = f"skipped by the job section ({where} layer.{layer.title}.skip)"
    candidates = [i for i, r in reasons.items() if r is None]
    if not candidates:
        raise _nothing_to_export(document, reasons)
    names = dict(zip(candidates, file_safe_names([document.layers[i].title for i in candidates])))

    plans: list[LayerPlan] = []
    for i, layer in enumerate(document.layers):
        if reasons[i] is not None:
            plans.append(LayerPlan(i, layer, "skipped", reason=reasons[i]))
            continue
        own = overrides.get(layer.title, {})
        exporter = own.get("exporter") or layer_exporter(layer, default_exporter)
        extension = plugins.exporters.get(split_plugin_spec(exporter)[0]).extension or ""
        output = folder / (names[i] + extension)
        layer_flags = dict(flags) | {"service": layer_service(layer), "exporter": exporter,
                                     "output": str(output)}
        for key in ("levels", "scales"):  # the layer's own value replaces the map's
            if key in own:
                layer_flags[key] = own[key]
        for key in ("policy", "aoi"):
            if key in own:
                layer_flags[key] = [line.strip() for line in own[key].splitlines() if line.strip()]
        spec = job_spec_from(layer_config, job_name, layer_flags)
        if not spec.policies:
            raise UsageError("no levels chosen: give --levels (e.g. 0-8), --scales or --policy")
        try:
            job_plan = make_plan(plugins, spec, connection, fetching=fetching)
            if "exporter" not in own and mbtiles_cannot_hold(layer, job_plan):
                output = folder / (names[i] + (plugins.exporters.get(VECTOR_EXPORTER).extension
                                               or ""))
                layer_flags |= {"exporter": VECTOR_EXPORTER, "output": str(output)}
                spec = job_spec_from(layer_config, job_name, layer_flags)
                job_plan = make_plan(plugins, spec, connection, fetching=fetching)
        except (AreaError, LevelError, PolicyError, SchemeError, UsageError, ServiceError) as exc:
            reason = service_skip_reason(layer, exc) if isinstance(exc, ServiceError) else \
                f"nothing to export here: {exc}"
            if reason is None:
                plans.append(LayerPlan(i, layer, "failed", reason=connection.redact(exc),
                                       output=output, spec=spec))
            else:
                plans.append(LayerPlan(i, layer, "skipped", reason=connection.redact(reason)))
            continue
        except CacheorchError:
            raise
        plans.append(LayerPlan(i, layer, "planned", plan=job_plan, output=output, spec=spec))
    if not any(lp.status in ("planned", "failed") for lp in plans):  # e.g. none is cached
        raise _nothing_to_export(document, {lp.index: lp.reason for lp in plans})
    parameters = {"map": document.source, "path": document.path, "job": job_name,
                  "flags": {k: v for k, v in flags.items() if k != "token" and v not in
                            (None, (), [], False)}}
    return MapPlan(document, folder, tuple(plans), parameters)

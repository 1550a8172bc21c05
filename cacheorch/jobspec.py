"""What a job asks for, merged from a ``[job:NAME]`` section and command-line flags (flags win).

A JobSpec holds only strings a user wrote, never a token, so it can be stored in the catalog as the
job's parameters and read back by ``resume``.
"""
from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field, replace
from typing import Any
from urllib.parse import urlencode

from cacheorch.config import AreaSpec, Config, parse_area_flag
from cacheorch.errors import ConfigError, UsageError
from cacheorch.options import split_plugin_spec

__all__ = ["JobSpec", "PluginSpec", "job_spec_from"]

DEFAULT_EXPORTER = "tpkx"
DEFAULT_WORKERS = 8
#: Stop when more than half of the last requests failed, unless the job says otherwise.
DEFAULT_MAX_FAILURE_RATE = 0.5
DEFAULT_FAILURE_WINDOW = 200
#: Config keys of a job's politeness towards the server (flags --user-agent, --max-rps...).
_POLITENESS_KEYS = {"user_agent", "max_rps", "max_failure_rate", "failure_window"}
#: Where a job's bundles are fetched (see :mod:`cacheorch.dask_executor`).
EXECUTORS = ("local", "dask")
_BOOLEANS: dict[str, bool | None] = {"1": True, "true": True, "yes": True, "on": True, "0": False,
                                     "false": False, "no": False, "off": False, "auto": None}


@dataclass(frozen=True)
class PluginSpec:
    """A plugin named with its string options, and where that came from (for error messages)."""

    name: str
    options: dict[str, str] = field(default_factory=dict)
    where: str = "command line"

    @classmethod
    def parse(cls, text: str, where: str) -> PluginSpec:
        name, options = split_plugin_spec(text)
        if not name:
            raise ConfigError(f"{where}: {text!r} names no plugin")
        return cls(name, options, where)


@dataclass(frozen=True)
class JobSpec:
    """A job as asked for: service, level policies, areas per level range, exporter and output."""

    service: str
    name: str | None = None
    source: PluginSpec | None = None
    policies: tuple[PluginSpec, ...] = ()
    areas: tuple[AreaSpec, ...] = ()
    exporter: PluginSpec = PluginSpec(DEFAULT_EXPORTER)
    output: str | None = None
    workers: int = DEFAULT_WORKERS
    mode: str = "create"
    referer: str | None = None
    allow_partial: bool = False
    #: Write the output even when the service had no tile at all where the job asked.
    allow_empty: bool = False
    #: Ask ``/tilemap`` per bundle first: None = when the service lists Tilemap.
    tilemap: bool | None = None
    #: Politeness: a User-Agent to send instead of cacheorch's, and requests per second at most.
    user_agent: str | None = None
    max_rps: float | None = None
    #: Stop the job (resumable) when more than this fraction of the last ``failure_window``
    #: requests failed; None never stops early (the command line's default is 0.5; 1 means None).
    max_failure_rate: float | None = None
    failure_window: int = DEFAULT_FAILURE_WINDOW
    #: Where bundles are fetched: ``local`` (this process) or ``dask`` (a dask.distributed cluster).
    executor: str = "local"
    #: The dask scheduler's address (``tcp://HOST:PORT``) for ``executor = dask``.
    scheduler: str | None = None
    #: Bytes a tile may have at most (None: the tile acceptor's default, 16 MiB).
    max_tile_size: int | None = None

    def connection_options(self) -> dict[str, Any]:
        """Keyword arguments for :class:`~cacheorch.connection.Connection` (run and resume)."""
        options: dict[str, Any] = {"max_rps": self.max_rps,
                                   "max_failure_rate": self.max_failure_rate,
                                   "failure_window": self.failure_window}
        if self.user_agent:
            options["user_agent"] = self.user_agent
        if self.max_tile_size:
            options["max_tile_size"] = self.max_tile_size
        return options

    def to_parameters(self) -> dict[str, Any]:
        """A JSON-able dict for the catalog (no secrets: a JobSpec never holds one)."""
        data = asdict(self)
        data["areas"] = [{"levels": sorted(a.levels) if a.levels is not None else None,
                          "spec": a.spec, "label": a.label} for a in self.areas]
        return data

    @classmethod
    def from_parameters(cls, data: dict[str, Any]) -> JobSpec:
        def plugin(d: dict[str, Any] | None) -> PluginSpec | None:
            return PluginSpec(d["name"], dict(d.get("options") or {}), d.get("where", "catalog")) \
                if d else None
        areas = tuple(AreaSpec(frozenset(a["levels"]) if a["levels"] is not None else None,
                               a["spec"], a.get("label", a["spec"])) for a in data.get("areas", ()))
        return cls(service=data["service"], name=data.get("name"), source=plugin(data.get("source")),
                   policies=tuple(p for p in (plugin(d) for d in data.get("policies", ())) if p),
                   areas=areas, exporter=plugin(data.get("exporter")) or PluginSpec(DEFAULT_EXPORTER),
                   output=data.get("output"), workers=int(data.get("workers", DEFAULT_WORKERS)),
                   mode=data.get("mode", "create"), referer=data.get("referer"),
                   allow_partial=bool(data.get("allow_partial", False)),
                   allow_empty=bool(data.get("allow_empty", False)),
                   tilemap=data.get("tilemap"), **_politeness_from(data), executor=data.get("executor", "local"),
                   scheduler=data.get("scheduler"), max_tile_size=data.get("max_tile_size"))


def _lines(value: str) -> list[str]:
    return [line.strip() for line in value.replace("\r", "").split("\n") if line.strip()]


def _service_from_config(config: Config, value: str, where: str) -> tuple[str, dict[str, str]]:
    """A ``service`` value is a ``[service:NAME]`` name or a URL / path."""
    if value in config.services:
        section = dict(config.services[value])
        here = config.where(f"service:{value}")
        url, path = section.pop("url", None), section.pop("path", None)
        if not (url or path):
            raise ConfigError(f"{here}: needs url (or path)")
        return (url if url else config.resolve_path(path or "")), section
    return value, {}


def job_spec_from(config: Config, job_name: str | None, flags: dict[str, Any]) -> JobSpec:
    """Merge a config job (if named) with flags; flags replace the section's values key by key."""
    section: dict[str, str] = config.job(job_name) if job_name else {}
    where = (lambda key: config.where(f"job:{job_name}", key)) if job_name else \
        (lambda key: f"--{key}")

    known = {"service", "source", "levels", "scales", "policy", "aoi", "exporter", "output",
             "workers", "mode", "referer", "allow_partial", "allow_empty", "tilemap", "executor",
             "scheduler", "max_tile_size"}
    known |= _POLITENESS_KEYS
    for key in section:
        if key not in known:
            raise ConfigError(f"{where(key)}: unknown key (keys: {', '.join(sorted(known))})")

    service_value = flags.get("service") or section.get("service")
    if not service_value:
        raise UsageError("no service: give --service URL (or a [job:NAME] with service = ...)")
    service_where = "--service" if flags.get("service") else where("service")
    location, service_options = _service_from_config(config, service_value, service_where)
    referer = flags.get("referer") or section.get("referer") or service_options.pop("referer", None)

    source_name = flags.get("source") or section.get("source") or service_options.pop("source", None)
    source = None
    if source_name or service_options:
        if not source_name:
            raise ConfigError(f"{config.where('service:' + service_value)}: options "
                              f"{', '.join(sorted(service_options))} need source = NAME")
        source = PluginSpec(source_name, service_options, config.where(f"service:{service_value}"))

    policies: list[PluginSpec] = []
    levels = flags.get("levels") or section.get("levels")
    if levels:
        policies.append(PluginSpec("levels", {"": levels}, "--levels" if flags.get("levels")
                                   else where("levels")))
    scales = flags.get("scales") or section.get("scales")
    if scales:
        policies.append(PluginSpec("snap", {"": scales}, "--scales" if flags.get("scales")
                                   else where("scales")))
    policy_values = list(flags.get("policy") or ()) or _lines(section.get("policy", ""))
    for value in policy_values:
        policies.append(PluginSpec.parse(value, "--policy" if flags.get("policy")
                                         else where("policy")))

    area_values = list(flags.get("aoi") or ())
    area_where = "--aoi"
    if not area_values and section.get("aoi"):
        area_values, area_where = _lines(section["aoi"]), where("aoi")
    areas = tuple(_area_with_section(config, parse_area_flag(v, area_where)) for v in area_values)

    exporter_value = flags.get("exporter") or section.get("exporter") or DEFAULT_EXPORTER
    exporter = PluginSpec.parse(exporter_value, "--exporter" if flags.get("exporter")
                                else where("exporter"))
    output = flags.get("output") or section.get("output")
    if output and section.get("output") and not flags.get("output"):
        output = config.resolve_path(output)
    try:
        workers = int(flags.get("workers") or section.get("workers") or DEFAULT_WORKERS)
    except ValueError:
        raise ConfigError(f"{where('workers')}: not a whole number") from None
    if workers < 1:
        raise ConfigError(f"{where('workers')}: must be at least 1")
    mode = flags.get("mode") or section.get("mode") or "create"
    if mode not in ("create", "overwrite", "merge"):
        raise ConfigError(f"{where('mode')}: {mode!r} is not one of create, overwrite, merge")
    allow_partial = bool(flags.get("allow_partial")) or \
        _BOOLEANS.get(section.get("allow_partial", "").lower()) is True
    allow_empty = bool(flags.get("allow_empty")) or \
        _BOOLEANS.get(section.get("allow_empty", "").lower()) is True
    tilemap = flags.get("tilemap")
    if tilemap is None and section.get("tilemap", "").strip():
        value = section["tilemap"].strip().lower()
        if value not in _BOOLEANS:
            raise ConfigError(f"{where('tilemap')}: {value!r} is not one of yes, no, auto")
        tilemap = _BOOLEANS[value]
    executor = (flags.get("executor") or section.get("executor") or "local").strip().lower()
    executor_where = "--executor" if flags.get("executor") else where("executor")
    if executor not in EXECUTORS:
        raise ConfigError(f"{executor_where}: {executor!r} is not one of {', '.join(EXECUTORS)}")
    scheduler = (flags.get("scheduler") or section.get("scheduler") or "").strip() or None
    if executor == "dask" and not scheduler:
        raise ConfigError(f"{executor_where}: the dask executor needs a scheduler address "
                          "(--scheduler tcp://HOST:PORT, or scheduler = ... in the job section)")
    if scheduler and executor != "dask":
        raise ConfigError(f"{'--scheduler' if flags.get('scheduler') else where('scheduler')}: a scheduler is used only with the dask "
                          "executor (--executor dask)")
    spec = JobSpec(service=location, name=job_name, source=source, policies=tuple(policies),
                   areas=areas, exporter=exporter, output=output, workers=workers, mode=mode,
                   referer=referer, allow_partial=allow_partial, allow_empty=allow_empty,
                   tilemap=tilemap,
                   executor=executor, scheduler=scheduler, **_politeness(flags, section, where),
                   max_tile_size=_max_tile_size(flags, section, where))
    return spec


def _max_tile_size(flags: dict[str, Any], section: dict[str, str], where: Any) -> int | None:
    """``--max-tile-size`` / ``max_tile_size``: ``16MiB``, ``500KB``, ``1048576`` → bytes."""
    from cacheorch.errors import PolicyError
    from cacheorch.plugins.policy_budget import parse_bytes
    text = flags.get("max_tile_size") or section.get("max_tile_size", "").strip()
    if not text:
        return None
    shown = "--max-tile-size" if flags.get("max_tile_size") else where("max_tile_size")
    try:
        return parse_bytes(text, shown)
    except PolicyError as exc:
        raise ConfigError(str(exc)) from None


def _politeness_from(data: dict[str, Any]) -> dict[str, Any]:
    """The politeness fields of stored parameters (absent in jobs recorded before them)."""
    def number(key: str) -> float | None:
        return None if data.get(key) is None else float(data[key])
    return {"user_agent": data.get("user_agent"), "max_rps": number("max_rps"),
            "max_failure_rate": number("max_failure_rate"),
            "failure_window": int(data.get("failure_window") or DEFAULT_FAILURE_WINDOW)}


def _politeness(flags: dict[str, Any], section: dict[str, str], where: Any) -> dict[str, Any]:
    """User-Agent, request rate and failure threshold from flags or the job section, checked."""
    config_where = where

    def where(key: str) -> str:  # noqa: F811 - flags are named as typed
        return f"--{key.replace('_', '-')}" if flags.get(key) is not None else config_where(key)
    user_agent = flags.get("user_agent") or section.get("user_agent") or None
    if user_agent is not None and any(c in user_agent for c in "\r\n\0"):
        raise ConfigError(f"{where('user_agent')}: a User-Agent must be one line")
    max_rps = _number(flags, section, "max_rps", where, float, minimum=0.0, above=True)
    rate = _number(flags, section, "max_failure_rate", where, float, minimum=0.0)
    if rate is not None and rate > 1:
        raise ConfigError(f"{where('max_failure_rate')}: must be a fraction up to 1 (0.5 = half "
                          f"the requests; 1 = never stop early)")
    if rate is None:
        # A dead or refusing server ends the job early (resumable) instead of being asked for
        # every tile of it, several times over.
        rate = DEFAULT_MAX_FAILURE_RATE
    elif rate == 1:
        rate = None
    window = _number(flags, section, "failure_window", where, int, minimum=1)
    return {"user_agent": user_agent, "max_rps": max_rps, "max_failure_rate": rate,
            "failure_window": int(window or DEFAULT_FAILURE_WINDOW)}


def _number(flags: dict[str, Any], section: dict[str, str], key: str, where: Any,
            kind: type, *, minimum: float, above: bool = False) -> Any:
    """A numeric flag or config value (flags win), checked against its lower bound."""
    value = flags.get(key)
    if value is None:
        text = section.get(key, "").strip()
        if not text:
            return None
        try:
            value = kind(text)
        except ValueError:
            raise ConfigError(f"{where(key)}: {text!r} is not a "
                              f"{'whole ' if kind is int else ''}number") from None
    if value < minimum or (above and value == minimum):
        raise ConfigError(f"{where(key)}: must be {'above' if above else 'at least'} {minimum:g}")
    return value


def _area_with_section(config: Config, area: AreaSpec) -> AreaSpec:
    """Expand ``town`` into the generator spec of ``[aoi:town]`` (``generator`` + ``path``/``spec``)."""
    if area.spec not in config.areas:
        return area
    section = dict(config.areas[area.spec])
    here = config.where(f"aoi:{area.spec}")
    generator = section.pop("generator", None)
    value = section.pop("spec", None) or section.pop("path", None) or section.pop("bbox", None) or ""
    url = section.pop("url", None)
    if url:  # a URL-addressed area (featureservice): its other keys become the URL's query
        value = url + (("&" if "?" in url else "?") + urlencode(section) if section else "")
        section = {}
    if section:
        raise ConfigError(f"{here}: unknown key {sorted(section)[0]!r} (keys: generator, path, "
                          "bbox, spec, url)")
    if generator is None:
        raise ConfigError(f"{here}: needs generator = NAME (extent, bbox, file...)")
    if "path" in config.areas[area.spec] or generator in ("file", "layer"):
        value = _resolve_file(config, value)
    elif generator == "buffer" and ":" in value:  # buffer:DISTANCE:INNER, INNER maybe a file
        distance, _, inner = value.partition(":")
        value = f"{distance}:{_resolve_file(config, inner, only_existing=True)}"
    spec = f"{generator}:{value}" if value else generator
    return replace(area, spec=spec, label=area.spec)


def _resolve_file(config: Config, value: str, *, only_existing: bool = False) -> str:
    """A file named in the config, relative to the config's folder, keeping its ``#LAYER`` and
    ``@WKID`` suffixes (``parcels.gpkg#lots@2056``).

    :param only_existing: resolve only when the file exists there (the value may be a spec such
        as ``extent`` rather than a file).
    """
    head, suffix = value, ""
    for mark in ("#", "@"):
        if mark in head:
            cut = head.index(mark) if mark == "#" else head.rindex(mark)
            head, suffix = head[:cut], head[cut:] + suffix
    if not head:
        return value
    resolved = config.resolve_path(head)
    if only_existing and not os.path.exists(resolved):
        return value
    return resolved + suffix

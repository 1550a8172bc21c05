"""cacheorch.ini: ``[cacheorch]``, ``[service:NAME]``, ``[aoi:NAME]``, ``[job:NAME]``.

Command-line flags override the file. Every error names the file, the section and the key, because
a scheduled job's log is often all an administrator has.
"""
from __future__ import annotations

import configparser
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from cacheorch.errors import ConfigError

__all__ = ["Config", "AreaSpec", "load_config", "parse_area_flag", "parse_level_set", "CONFIG_ENV"]

#: Environment variable naming the config file (tests point it at an empty temp file).
CONFIG_ENV = "CACHEORCH_CONFIG"
_LEVELS_PREFIX = re.compile(r"^\s*(\d[\d,\s-]*?)\s*[:=]\s*(\S.*)$")


@dataclass(frozen=True)
class AreaSpec:
    """One ``--aoi``: the levels it applies to (None = every level not named elsewhere) and its spec."""

    levels: frozenset[int] | None
    spec: str
    label: str

    @property
    def level_text(self) -> str:
        from cacheorch.tiling import format_levels
        return "default" if self.levels is None else format_levels(self.levels)


def parse_level_set(text: str, where: str) -> frozenset[int]:
    """``0-5,8`` → {0,1,2,3,4,5,8}; malformed text is a ConfigError naming ``where``."""
    levels: set[int] = set()
    for part in text.replace(" ", "").split(","):
        if not part:
            continue
        m = re.fullmatch(r"(\d+)(?:-(\d+))?", part)
        if not m:
            raise ConfigError(f"{where}: {text!r} is not a level list such as 0-5,8")
        first, last = int(m.group(1)), int(m.group(2) or m.group(1))
        if last < first:
            raise ConfigError(f"{where}: level range {part!r} runs backwards")
        levels.update(range(first, last + 1))
    if not levels:
        raise ConfigError(f"{where}: no levels in {text!r}")
    return frozenset(levels)


def parse_area_flag(value: str, where: str) -> AreaSpec:
    """``0-3=extent`` / ``4-8: town.geojson`` / ``extent`` (no levels: the default area)."""
    m = _LEVELS_PREFIX.match(value)
    if m:
        return AreaSpec(parse_level_set(m.group(1), where), m.group(2).strip(), m.group(2).strip())
    if not value.strip():
        raise ConfigError(f"{where}: empty area")
    return AreaSpec(None, value.strip(), value.strip())


@dataclass
class Config:
    """The parsed file (or an empty one): sections by kind and name, with their origin for errors."""

    path: Path | None = None
    main: dict[str, str] = field(default_factory=dict)
    services: dict[str, dict[str, str]] = field(default_factory=dict)
    areas: dict[str, dict[str, str]] = field(default_factory=dict)
    jobs: dict[str, dict[str, str]] = field(default_factory=dict)

    def where(self, section: str, key: str | None = None) -> str:
        place = f"{self.path or 'command line'} [{section}]"
        return f"{place} {key}" if key else place

    def resolve_path(self, value: str) -> str:
        """Paths in the file are relative to the file's folder, not to the working directory."""
        if self.path is None or os.path.isabs(value) or "://" in value:
            return value
        candidate = self.path.parent / value
        return str(candidate)

    @property
    def catalog(self) -> str | None:
        value = self.main.get("catalog")
        return self.resolve_path(value) if value else None

    def job(self, name: str) -> dict[str, str]:
        try:
            return self.jobs[name]
        except KeyError:
            known = ", ".join(sorted(self.jobs)) or "none"
            raise ConfigError(f"{self.path or 'no config file'}: no [job:{name}] section "
                              f"(jobs: {known})") from None


def _default_path() -> Path | None:
    env = os.environ.get(CONFIG_ENV)
    if env:
        return Path(env)
    local = Path("cacheorch.ini")
    return local if local.is_file() else None


def load_config(path: str | os.PathLike[str] | None = None) -> Config:
    """Read cacheorch.ini: ``path``, else ``$CACHEORCH_CONFIG``, else ./cacheorch.ini if present."""
    chosen = Path(path) if path is not None else _default_path()
    if chosen is None:
        return Config()
    if not chosen.exists() or chosen.is_dir():
        raise ConfigError(f"{chosen}: config file not found")
    parser = configparser.ConfigParser(interpolation=None, default_section="__defaults__")
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    try:
        parser.read(chosen, encoding="utf-8")
    except configparser.Error as exc:
        first = str(exc).splitlines()[0]
        raise ConfigError(f"{chosen}: {first}") from None
    config = Config(path=chosen)
    known = {"service": config.services, "aoi": config.areas, "job": config.jobs}
    for section in parser.sections():
        values = {k: v.strip() for k, v in parser.items(section)}
        if section == "cacheorch":
            config.main = values
            continue
        kind, sep, name = section.partition(":")
        if not sep or kind not in known or not name.strip():
            raise ConfigError(f"{chosen} [{section}]: unknown section (expected [cacheorch], "
                              "[service:NAME], [aoi:NAME] or [job:NAME])")
        known[kind][name.strip()] = values
    return config

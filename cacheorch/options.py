"""Turn strings from a config section or a ``NAME:key=value,...`` flag into a plugin's typed Options."""
from __future__ import annotations

import dataclasses
import re
import typing
from collections.abc import Mapping
from typing import Any

from cacheorch.errors import ConfigError

__all__ = ["split_plugin_spec", "parse_options", "build_plugin"]

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}
# A comma starts a new option only when a ``key=`` follows, so values may hold commas ("0-5,8").
_OPTION_SPLIT = re.compile(r",(?=\s*[A-Za-z_][\w-]*\s*=)")


def split_plugin_spec(spec: str) -> tuple[str, dict[str, str]]:
    """``levels:0-5,8`` → ("levels", {"": "0-5,8"}); ``x:a=1,b=2,3`` → ("x", {"a": "1", "b": "2,3"}).

    The empty key holds a bare value, which the plugin's ``positional`` option receives.
    """
    name, sep, rest = spec.partition(":")
    name = name.strip()
    raw: dict[str, str] = {}
    if sep and rest.strip():
        for part in _OPTION_SPLIT.split(rest):
            key, eq, value = part.partition("=")
            if eq and re.fullmatch(r"\s*[A-Za-z_][\w-]*\s*", key):
                raw[key.strip().replace("-", "_")] = value.strip()
            else:
                raw[""] = part.strip() if "" not in raw else raw[""] + "," + part.strip()
    return name, raw


def _convert(value: str, kind: Any, where: str, key: str) -> Any:
    origin = typing.get_origin(kind)
    if origin is typing.Union or str(origin) == "types.UnionType":
        args = [a for a in typing.get_args(kind) if a is not type(None)]
        if value.strip().lower() in ("", "none"):
            return None
        kind = args[0]
    try:
        if kind is bool:
            low = value.strip().lower()
            if low in _TRUE:
                return True
            if low in _FALSE:
                return False
            raise ValueError("expected true or false")
        if kind is int:
            return int(value)
        if kind is float:
            return float(value)
    except ValueError as exc:
        raise ConfigError(f"{where}: {key} = {value!r}: {exc}") from None
    return value


def parse_options(options_cls: type, raw: Mapping[str, str], where: str,
                  positional: str | None = None) -> Any:
    """Build ``options_cls`` from strings, converting by field type and refusing unknown keys.

    :param where: names the place the strings came from (``cacheorch.ini [job:x] policy``) for errors.
    """
    raw = dict(raw)
    if "" in raw:
        if positional is None:
            raise ConfigError(f"{where}: {raw['']!r} needs a key (key=value)")
        raw[positional] = raw.pop("")
    if not dataclasses.is_dataclass(options_cls):
        if raw:
            raise ConfigError(f"{where}: takes no options, got {', '.join(sorted(raw))}")
        return options_cls()
    hints = typing.get_type_hints(options_cls)
    fields = {f.name: f for f in dataclasses.fields(options_cls)}
    unknown = sorted(set(raw) - set(fields))
    if unknown:
        known = ", ".join(sorted(fields)) or "none"
        raise ConfigError(f"{where}: unknown option {unknown[0]!r} (options: {known})")
    values = {key: _convert(value, hints[key], where, key) for key, value in raw.items()}
    try:
        return options_cls(**values)
    except TypeError as exc:
        raise ConfigError(f"{where}: {exc}") from None


def build_plugin(cls: type, raw: Mapping[str, str], where: str) -> Any:
    """Construct a plugin class from string options."""
    options = parse_options(cls.Options, raw, where, getattr(cls, "positional", None))
    return cls(options)

"""A vector tile layer's resources: the style, its sprites (1x, 2x) and the glyph ranges its fonts need.

The style is the service's default style (``resources/styles``); every URL in it is resolved
against the style's own URL (spec §1.4: Esri's are relative, portal styles may be absolute and
timestamped). What a package holds is written under Esri's fixed names
(``resources/sprites/sprite``, ``resources/fonts/<stack>/<range>.pbf``) and the style is rewritten
to point there, relative to ``resources/styles/root.json``, so it resolves inside the package.

Which glyph ranges: every range the service lists for each font stack the style names
(``resources/info``), else every range of the Basic Multilingual Plane that the service has;
a font stack with no glyphs at all, or a missing sprite file, is an error naming it.
"""
from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, unquote, urljoin

from cacheorch.errors import ExportError, ServiceError

__all__ = ["StyleRefs", "style_references", "font_stacks", "package_style", "collect_resources",
           "get_bytes", "SPRITE_FILES", "PACKAGE_SPRITE", "PACKAGE_GLYPHS", "PACKAGE_SOURCE",
           "glyph_path", "MAPLIBRE_DEFAULT_FONT"]

#: Sprite files of one sprite base, 1x and 2x (MapLibre asks for ``@2x`` on high-DPI screens).
SPRITE_FILES = (".json", ".png", "@2x.json", "@2x.png")
#: The style's references inside a package, relative to ``resources/styles/root.json``.
PACKAGE_SPRITE = "../sprites/sprite"
PACKAGE_GLYPHS = "../fonts/{fontstack}/{range}.pbf"
PACKAGE_SOURCE = "../../"
#: What MapLibre draws text with when a layer names no ``text-font``.
MAPLIBRE_DEFAULT_FONT = "Open Sans Regular,Arial Unicode MS Regular"
_RANGES = tuple(f"{i}-{i + 255}" for i in range(0, 65536, 256))
#: Glyph ranges fetched at once (small files; the session pools connections).
_GLYPH_WORKERS = 8

Fetch = Callable[[str], "bytes | None"]


def get_bytes(connection: Any, url: str) -> bytes | None:
    """A binary resource (sprite, glyph range) through the connection's session and token;
    None for 404. One renewal of a refused token, as :meth:`Connection.get_json` does."""
    import requests

    shown = connection.redact(url)
    for attempt in (0, 1):
        token = connection.token
        try:
            response = connection.session.get(url, params=connection.params(),
                                              timeout=connection.timeout)
        except requests.exceptions.RequestException as exc:
            raise ServiceError(f"cannot read {shown}: {connection.redact(type(exc).__name__)}") \
                from None
        if response.status_code in (498, 499) and attempt == 0 and connection.can_renew_token:
            if connection.renew_token(token, url) is not None:
                continue
        break
    if response.status_code == 404:
        return None
    if response.status_code != 200:
        raise ServiceError(f"{shown}: HTTP {response.status_code} {response.reason}")
    return response.content


@dataclass(frozen=True)
class StyleRefs:
    """What a style refers to, as absolute URLs: sprite bases, the glyphs template, font stacks."""

    sprites: tuple[str, ...]
    glyphs: str | None
    fonts: tuple[str, ...]


#: Expression operators that can open a ``text-font`` value (never font names).
_OPERATORS = frozenset({"get", "step", "match", "case", "coalesce", "interpolate", "literal",
                        "zoom", "to-string", "concat"})


def _text_fonts(value: Any, top: bool = True) -> Iterator[str]:
    """Font stacks in a ``text-font`` value: a list of names, or ``["literal", [...]]`` lists
    inside an expression (data-driven names cannot be known and are not guessed)."""
    if not isinstance(value, list) or not value:
        return
    if value[0] == "literal" and len(value) == 2 and isinstance(value[1], list) \
            and value[1] and all(isinstance(v, str) for v in value[1]):
        yield ",".join(value[1])
    elif top and all(isinstance(v, str) for v in value) and value[0] not in _OPERATORS:
        yield ",".join(value)
    else:
        for item in value:
            yield from _text_fonts(item, top=False)


def font_stacks(style: dict[str, Any]) -> tuple[str, ...]:
    """Every font stack the style's symbol layers draw text with, sorted."""
    stacks: set[str] = set()
    for layer in style.get("layers") or []:
        layout = layer.get("layout") if isinstance(layer, dict) else None
        if not isinstance(layout, dict) or "text-field" not in layout:
            continue
        found = list(_text_fonts(layout.get("text-font")))
        stacks.update(found or [MAPLIBRE_DEFAULT_FONT])
    return tuple(sorted(stacks))


def style_references(style: dict[str, Any], style_url: str) -> StyleRefs:
    """Resolve the style's sprite and glyphs URLs against ``style_url``."""
    sprite = style.get("sprite")
    bases: list[str] = []
    if isinstance(sprite, str) and sprite:
        bases.append(urljoin(style_url, sprite))
    elif isinstance(sprite, list):  # MapLibre v4: [{"id": ..., "url": ...}]
        bases += [urljoin(style_url, s["url"]) for s in sprite
                  if isinstance(s, dict) and isinstance(s.get("url"), str)]
    glyphs = style.get("glyphs")
    return StyleRefs(tuple(bases),
                     urljoin(style_url, glyphs) if isinstance(glyphs, str) and glyphs else None,
                     font_stacks(style))


def glyph_path(stack: str, rng: str) -> str:
    """Where a glyph range lives in a package, below ``resources/``."""
    return f"fonts/{stack}/{rng}.pbf"


def package_style(style: dict[str, Any], service_url: str, style_url: str) -> dict[str, Any]:
    """The style with its sprite, glyphs and this service's sources pointing inside the package.

    Sources that are not this service are refused: a package cannot hold another layer's tiles.
    """
    out = json.loads(json.dumps(style))
    if out.get("sprite"):
        out["sprite"] = PACKAGE_SPRITE
    if out.get("glyphs"):
        out["glyphs"] = PACKAGE_GLYPHS
    root = service_url.rstrip("/") + "/"
    for name, source in (out.get("sources") or {}).items():
        if not isinstance(source, dict) or source.get("type") != "vector":
            continue
        urls = [source["url"]] if isinstance(source.get("url"), str) else []
        urls += [t for t in source.get("tiles") or [] if isinstance(t, str)]
        resolved = [urljoin(style_url, u).split("?", 1)[0] for u in urls]
        if not resolved or not all(u.rstrip("/") + "/" == root or u.startswith(root)
                                   for u in resolved):
            raise ExportError(f"style source {name!r} is not this service ({', '.join(urls) or 'no url'}); "
                              f"a package holds only {service_url}'s tiles")
        source.pop("tiles", None)
        source["url"] = PACKAGE_SOURCE
    return out


def _listed_ranges(info: bytes | None) -> dict[str, list[str]]:
    """stack → ranges from a ``resources/info`` answer (``{"resourceInfo": ["../fonts/…"]}``)."""
    if not info:
        return {}
    try:
        entries = json.loads(info).get("resourceInfo") or []
    except (ValueError, AttributeError):
        return {}
    out: dict[str, list[str]] = {}
    for entry in entries:
        if not isinstance(entry, str) or "fonts/" not in entry or not entry.endswith(".pbf"):
            continue
        stack, _, rng = unquote(entry.split("fonts/", 1)[1]).rpartition("/")
        out.setdefault(stack, []).append(rng[:-4])
    return out


def _glyphs(template: str, stacks: tuple[str, ...], listed: dict[str, list[str]], fetch: Fetch,
            out: dict[str, bytes], missing: list[str]) -> None:
    """Every listed range of each stack (else every range that exists), a few requests at a
    time: a basemap's fonts are thousands of small files."""
    wanted = [(stack, rng, template.replace("{fontstack}", quote(stack)).replace("{range}", rng))
              for stack in stacks for rng in listed.get(stack) or _RANGES]
    with ThreadPoolExecutor(max_workers=_GLYPH_WORKERS) as pool:
        answers = pool.map(lambda item: fetch(item[2]), wanted)
        found: dict[str, int] = {}
        for (stack, rng, url), data in zip(wanted, answers):
            if data is not None:
                out[glyph_path(stack, rng)] = data
                found[stack] = found.get(stack, 0) + 1
            elif stack in listed:
                missing.append(f"glyph range {rng} of font {stack!r} ({url})")
    for stack in stacks:
        if stack not in listed and not found.get(stack):
            missing.append(f"font {stack!r}: no glyph range found under {template}")


def collect_resources(service_url: str, style_url: str, fetch: Fetch
                      ) -> dict[str, bytes]:
    """Everything the default style needs, by path below ``resources/``; ExportError naming
    every missing piece (sprite files, font stacks without glyphs) at once."""
    where = style_url
    raw = fetch(style_url)
    if raw is None:
        raise ExportError(f"the service has no default style at {style_url}")
    try:
        style = json.loads(raw)
    except ValueError:
        raise ExportError(f"the style at {where} is not JSON") from None
    if not isinstance(style, dict) or not isinstance(style.get("layers"), list):
        raise ExportError(f"the style at {where} is not a style (no layers)")
    refs = style_references(style, style_url)
    out: dict[str, bytes] = {}
    missing: list[str] = []
    for base in refs.sprites[:1]:
        for suffix in SPRITE_FILES:
            data = fetch(base + suffix)
            if data is None:
                missing.append(f"sprite {base.rsplit('/', 1)[-1]}{suffix} ({base}{suffix})")
            else:
                out[f"sprites/sprite{suffix}"] = data
    if refs.fonts and refs.glyphs is None:
        missing.append(f"glyphs for fonts {', '.join(refs.fonts)} (the style has no glyphs URL)")
    elif refs.fonts:
        listed = _listed_ranges(fetch(urljoin(service_url.rstrip("/") + "/", "resources/info")))
        _glyphs(refs.glyphs, refs.fonts, listed, fetch, out, missing)  # type: ignore[arg-type]
    if missing:
        raise ExportError("the style's resources are incomplete: " + "; ".join(missing))
    out["styles/root.json"] = json.dumps(package_style(style, service_url, style_url),
                                         ensure_ascii=False).encode("utf-8")
    listing = sorted("../" + path for path in out if not path.startswith("styles/"))
    out["info/root.json"] = json.dumps({"resourceInfo": listing}).encode()
    return out

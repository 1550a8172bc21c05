"""The offline copy of a QGIS project: the same project, each exported layer reading its local file.

Written by editing the original XML text, not by re-serialising a parsed tree: everything else
(styles, layouts, attribute order, comments, the skipped layers) stays byte for byte as it was.
Per exported layer three things change, and only these: ``<provider>`` becomes ``gdal``,
``<datasource>`` the file relative to the project (``./Topo.gpkg``), and the tree entry's
``providerKey`` / ``source`` follow. A ``singlebandcolordata`` renderer (what QGIS gives an
ArcGIS MapServer or XYZ layer, whose provider hands it one ARGB band) becomes ``multibandcolor``
over GDAL's RGBA bands with the same opacity: left as it was, the GDAL layer would draw band 1
as a colour value, which is wrong. A vector tile layer keeps provider ``vectortile`` and reads
``type=mbtiles&url=./x.mbtiles`` (the form QGIS 3.22 saves, relative path included; obs).
"""
from __future__ import annotations

import os
import re
import zipfile
from collections.abc import Mapping
from pathlib import Path
from xml.sax.saxutils import escape, quoteattr

from cacheorch.maps.qgis import read_project_text

__all__ = ["offline_project_text", "write_offline_project", "local_datasource",
           "vector_tile_datasource", "VECTOR_TILE_PROVIDER"]

#: The provider of a vector tile layer in a project (QGIS 3.22 writes it; later releases choose
#: the real provider from the datasource's ``type``).
VECTOR_TILE_PROVIDER = "vectortile"

_MAPLAYER = re.compile(r"<maplayer\b[^>]*>.*?</maplayer>", re.S)
_ID = re.compile(r"<id>\s*(.*?)\s*</id>", re.S)
_DATASOURCE = re.compile(r"(<datasource>)(.*?)(</datasource>)", re.S)
_PROVIDER = re.compile(r"(<provider\b[^>]*>)(.*?)(</provider>)", re.S)
_RENDERER = re.compile(r"<rasterrenderer\b[^>]*>")


def local_datasource(output: Path, folder: Path) -> str:
    """What GDAL opens for ``output``, relative to ``folder``: the file, or a cache folder's
    ``conf.xml``; ``./``-prefixed, as QGIS writes relative paths."""
    target = output
    if output.is_dir():
        target = next((p for p in output.iterdir() if p.name.lower() == "conf.xml"),
                      output / "conf.xml")
    relative = Path(os.path.relpath(target, folder)).as_posix()
    return relative if relative.startswith("../") else "./" + relative


def vector_tile_datasource(output: Path, folder: Path) -> str:
    """The ``vectortile`` datasource of a local vector tile file: ``type=mbtiles&url=./x.mbtiles``
    (``type=vtpk`` for a .vtpk, which QGIS reads from 3.26 on, not 3.22)."""
    kind = "vtpk" if output.suffix.lower() == ".vtpk" else "mbtiles"
    return f"type={kind}&url={local_datasource(output, folder)}"


def _renderer(tag: str) -> str:
    if 'type="singlebandcolordata"' not in tag:
        return tag
    tag = tag.replace('type="singlebandcolordata"', 'type="multibandcolor"')
    tag = re.sub(r'\s(?:band|alphaBand|redBand|greenBand|blueBand)="[^"]*"', "", tag)
    return tag[:-1].rstrip("/").rstrip() + ' redBand="1" greenBand="2" blueBand="3" ' \
        'alphaBand="4"' + ("/>" if tag.endswith("/>") else ">")


def _tree_entry(text: str, layer_id: str, datasource: str, provider: str = "gdal") -> str:
    pattern = re.compile(r"<layer-tree-layer\b[^>]*\bid=" + re.escape(quoteattr(layer_id)) +
                         r"[^>]*>")

    def edit(match: re.Match[str]) -> str:
        tag = re.sub(r'\bproviderKey="[^"]*"', f'providerKey="{provider}"', match.group(0))
        return re.sub(r'\bsource="[^"]*"', "source=" + quoteattr(datasource).replace("'", '"'),
                      tag)
    return pattern.sub(edit, text)


def offline_project_text(text: str, datasources: Mapping[str, str],
                         providers: Mapping[str, str] | None = None) -> str:
    """``text`` (a .qgs) with the layers of ``datasources`` (maplayer id → GDAL datasource)
    reading those files through GDAL, or through ``providers[id]`` when given (vector tile
    layers); everything else unchanged."""
    providers = providers or {}
    def edit(match: re.Match[str]) -> str:
        block = match.group(0)
        found = _ID.search(block)
        if found is None or found.group(1) not in datasources:
            return block
        source = escape(datasources[found.group(1)])
        provider = providers.get(found.group(1), "gdal")
        block = _DATASOURCE.sub(lambda m: m.group(1) + source + m.group(3), block, count=1)
        block = _PROVIDER.sub(lambda m: m.group(1) + provider + m.group(3), block, count=1)
        return _RENDERER.sub(lambda m: _renderer(m.group(0)), block, count=1)
    out = _MAPLAYER.sub(edit, text)
    for layer_id, datasource in datasources.items():
        out = _tree_entry(out, layer_id, datasource, providers.get(layer_id, "gdal"))
    return out


def write_offline_project(project: Path, datasources: Mapping[str, str], folder: Path,
                          providers: Mapping[str, str] | None = None) -> Path:
    """Write ``<project>-offline.qgs`` (``.qgz`` for a ``.qgz``, other members copied) into
    ``folder``; return its path."""
    text, member = read_project_text(project)
    edited = offline_project_text(text, datasources, providers)
    stem = project.stem + "-offline"
    if member is None:
        target = folder / (stem + ".qgs")
        tmp = target.with_suffix(".qgs.tmp")
        tmp.write_text(edited, encoding="utf-8")
    else:
        target = folder / (stem + ".qgz")
        tmp = target.with_suffix(".qgz.tmp")
        with zipfile.ZipFile(project) as source, \
                zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as out:
            for info in source.infolist():
                if info.filename == member:
                    out.writestr(stem + ".qgs", edited)
                else:
                    out.writestr(info, source.read(info))
    os.replace(tmp, target)
    return target

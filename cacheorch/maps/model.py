"""A map, read from whatever it was written in, as a plain value: its layers in table-of-contents order.

Readers (web map JSON, portal items, ``.mapx``, QGIS projects...) turn their format into a
:class:`MapDocument`; everything after that (classification, planning, running, the manifest,
the offline copy) sees only this value, so a new format is one reader and nothing else.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

__all__ = ["MapDocument", "MapLayer", "ROLES", "KINDS"]

#: Where a layer sits: under everything (basemap), on top (reference), or in between (operational).
ROLES = ("basemap", "operational", "reference")
#: What a layer is, in words shared by every reader (``kind`` of :class:`MapLayer`):
#: ``tiled-map`` / ``tiled-image``: a cached MapServer / ImageServer read through ``/tile``;
#: ``map-service``: a MapServer drawn by a client that uses its cache when it has one (QGIS
#: ``arcgismapserver``); ``dynamic``: a map or image service drawn on demand (``export``);
#: ``feature``, ``wms``, ``vector-tile``, ``web-tiled`` (a non-ArcGIS XYZ template),
#: ``local`` (a file on disk), ``other`` (anything else; ``type`` says what).
KINDS = ("tiled-map", "tiled-image", "map-service", "dynamic", "feature", "wms", "vector-tile",
         "web-tiled", "local", "other")


@dataclass(frozen=True)
class MapLayer:
    """One leaf layer of a map (groups are flattened; ``group`` keeps their titles).

    :param title: the name a user sees in the table of contents.
    :param url: the service URL (MapServer / ImageServer / template...), or None.
    :param role: one of :data:`ROLES`.
    :param visibility: shown when the map opens (a hidden group hides its children).
    :param opacity: 0..1 (a group's opacity multiplies into its children's).
    :param kind: one of :data:`KINDS`.
    :param type: the format's own name for the layer type (``ArcGISTiledMapServiceLayer``,
        ``CIMFeatureLayer``, provider ``wms``...), for messages.
    :param ref: what a writer needs to find the layer again in the original document (a web
        map layer ``id``, a CIM ``uri``, a QGIS ``maplayer`` id); JSON-able.
    """

    title: str
    url: str | None
    role: str
    visibility: bool = True
    opacity: float = 1.0
    kind: str = "other"
    type: str = ""
    ref: dict[str, Any] = field(default_factory=dict)
    group: tuple[str, ...] = ()

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["group"] = list(self.group)
        return data


@dataclass(frozen=True)
class MapDocument:
    """A whole map: its title, where it came from, and its leaf layers top first.

    ``layers`` are in table-of-contents order, the top-most drawn layer first, whatever order
    the format stores them in (web maps store bottom first; CIM and QGIS top first).

    :param source: the location given by the user (a path or URL; never with a token).
    :param format: the reader's name (``webmap``, ``portal``, ``mapx``, ``qgis``...).
    :param path: for file-based maps, the file (an offline-copy writer edits a copy of it).
    """

    title: str
    source: str
    layers: tuple[MapLayer, ...]
    format: str = ""
    path: str | None = None

// The OpenLayers modules the workbench page uses, exposed as the global `ol` (see rebuild.sh).
export { default as Map } from "ol/Map.js";
export { default as View } from "ol/View.js";
export { default as Feature } from "ol/Feature.js";
export { default as TileLayer } from "ol/layer/Tile.js";
export { default as VectorLayer } from "ol/layer/Vector.js";
export { default as TileImage } from "ol/source/TileImage.js";
export { default as VectorSource } from "ol/source/Vector.js";
export { default as TileGrid } from "ol/tilegrid/TileGrid.js";
export { default as Projection } from "ol/proj/Projection.js";
export { default as Draw, createBox } from "ol/interaction/Draw.js";
export { default as GeoJSON } from "ol/format/GeoJSON.js";
export { default as Polygon, fromExtent as polygonFromExtent } from "ol/geom/Polygon.js";
export { Style, Stroke, Fill } from "ol/style.js";
export { defaults as defaultControls } from "ol/control/defaults.js";
export { default as ScaleLine } from "ol/control/ScaleLine.js";
export { default as Modify } from "ol/interaction/Modify.js";

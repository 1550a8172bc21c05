#!/bin/sh
# Rebuild the vendored OpenLayers bundle from the pinned versions in package-lock.json.
# Needs node and npm (only to rebuild: cacheorch and its tests use the committed build).
set -eu
cd "$(dirname "$0")"
npm ci --no-audit --no-fund
npm run build
cp node_modules/ol/LICENSE.md ../static/vendor/LICENSE-ol.md
cp node_modules/ol/ol.css ../static/vendor/ol.css
ls -l ../static/vendor/

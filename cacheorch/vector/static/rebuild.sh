#!/bin/sh
# Re-vendor MapLibre GL JS (the vector preview's map library) from npm, pinned.
# Run by hand when upgrading; tests and `cacheorch serve` never need npm.
set -eu
VERSION=4.7.1
here=$(cd "$(dirname "$0")" && pwd)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cd "$work"
npm pack "maplibre-gl@$VERSION" >/dev/null
tar xzf "maplibre-gl-$VERSION.tgz"
cp package/dist/maplibre-gl.js package/dist/maplibre-gl.css "$here/"
cp package/LICENSE.txt "$here/maplibre-gl.LICENSE.txt"
echo "maplibre-gl $VERSION" > "$here/VERSION"
sha256sum "$here/maplibre-gl.js" "$here/maplibre-gl.css" | sed "s#$here/##" >> "$here/VERSION"

/*
 * cacheorch preview: a small slippy map of one ArcGIS tiled MapServer, in the cache's own grid.
 *
 * Why our own viewer and not a web-map library: the preview must work offline and from the
 * package alone, and it must show caches in any spatial reference (State Plane feet, NZTM,
 * geographic), whose levels are not powers of two. Working directly in the cache's grid —
 * origin, tile size and the resolution of each level from tileInfo — needs no projection
 * library at all: a view is a centre in map units plus a level, and each tile's place on the
 * screen is plain arithmetic (spec §2.2).
 *
 * The page embeds its configuration (the service JSON and the levels that hold tiles) so the
 * first tiles are requested while the page loads, which is also what lets a headless browser's
 * screenshot show them.
 */
(function () {
  "use strict";

  var config = JSON.parse(document.getElementById("cacheorch-config").textContent);
  var service = config.service;
  var info = service.tileInfo;
  var origin = info.origin;
  var tileW = info.cols, tileH = info.rows;
  var tiled = config.levels.length ? config.levels : info.lods.map(function (l) { return l.level; });
  var lods = info.lods.filter(function (l) { return tiled.indexOf(l.level) >= 0; })
                      .sort(function (a, b) { return a.level - b.level; });
  if (!lods.length) { lods = info.lods.slice(); }
  var grids = config.grids || {};            // level -> [rows, cols] when the grid's end is known
  var units = (service.units || "").replace("esri", "").toLowerCase();

  var map = document.getElementById("map");
  var layer = document.getElementById("tiles");
  var status = document.getElementById("status");
  var levelList = document.getElementById("levels");
  var images = new Map();                     // "level/row/col" -> <img>
  var view = { i: 0, x: 0, y: 0 };           // index into lods; centre in map units
  var pointer = null;                          // last mouse position in map units, for the status

  function size() {
    return { w: map.clientWidth || 600, h: map.clientHeight || 400 };
  }

  function extent() {
    var e = service.fullExtent || service.initialExtent;
    if (e && isFinite(e.xmin) && e.xmax > e.xmin && e.ymax > e.ymin) { return e; }
    var g = grids[lods[0].level];
    var r = lods[0].resolution;
    if (g) {
      return { xmin: origin.x, ymax: origin.y, xmax: origin.x + g[1] * tileW * r,
               ymin: origin.y - g[0] * tileH * r };
    }
    return { xmin: origin.x, ymax: origin.y, xmax: origin.x + tileW * r, ymin: origin.y - tileH * r };
  }

  /* Where the tiles are (computed by the server from the cache), else the whole extent. */
  function dataExtent() {
    var d = config.dataExtent;
    if (d && d.length === 4 && d[2] > d[0] && d[3] > d[1]) {
      return { xmin: d[0], ymin: d[1], xmax: d[2], ymax: d[3] };
    }
    return extent();
  }

  /* The finest level at which the extent e (default: the whole one) fits, centred on it. */
  function fullView(e) {
    e = e || extent();
    var s = size(), i = 0;
    for (var k = 0; k < lods.length; k++) {
      var r = lods[k].resolution;
      if ((e.xmax - e.xmin) / r <= s.w && (e.ymax - e.ymin) / r <= s.h) { i = k; }
    }
    view.i = i;
    view.x = (e.xmin + e.xmax) / 2;
    view.y = (e.ymin + e.ymax) / 2;
  }

  function tileUrl(level, row, col) {
    return config.serviceUrl + "/tile/" + level + "/" + row + "/" + col;
  }

  function render() {
    var lod = lods[view.i], r = lod.resolution, s = size();
    var spanX = tileW * r, spanY = tileH * r;
    var xmin = view.x - s.w / 2 * r, ymax = view.y + s.h / 2 * r;
    var c0 = Math.max(0, Math.floor((xmin - origin.x) / spanX));
    var c1 = Math.floor((xmin + s.w * r - origin.x) / spanX);
    var r0 = Math.max(0, Math.floor((origin.y - ymax) / spanY));
    var r1 = Math.floor((origin.y - (ymax - s.h * r)) / spanY);
    var grid = grids[lod.level];
    if (grid) { r1 = Math.min(r1, grid[0] - 1); c1 = Math.min(c1, grid[1] - 1); }
    var wanted = new Set(), shown = 0;
    for (var row = r0; row <= r1; row++) {
      for (var col = c0; col <= c1; col++) {
        var key = lod.level + "/" + row + "/" + col;
        wanted.add(key);
        var img = images.get(key);
        if (!img) {
          img = document.createElement("img");
          img.alt = "";
          img.width = tileW;
          img.height = tileH;
          img.draggable = false;
          img.onerror = hide;
          img.src = tileUrl(lod.level, row, col);
          images.set(key, img);
          layer.appendChild(img);
        }
        img.style.left = Math.round((origin.x + col * spanX - xmin) / r) + "px";
        img.style.top = Math.round((ymax - (origin.y - row * spanY)) / r) + "px";
        if (img.style.visibility !== "hidden") { shown++; }
      }
    }
    images.forEach(function (img, key) {
      if (!wanted.has(key)) { img.remove(); images.delete(key); }
    });
    showStatus(shown);
    markLevel();
    remember();
  }

  // -- the view in the URL: #level=L&x=X&y=Y, so a reload or a shared link opens the same place --

  var permalink = document.getElementById("permalink");
  function remember() {
    var hash = "#level=" + lods[view.i].level + "&x=" + view.x.toFixed(3) + "&y=" + view.y.toFixed(3);
    if (permalink) { permalink.href = hash; }
    if (location.hash !== hash && window.history && history.replaceState) {
      history.replaceState(null, "", hash);
    }
  }

  function recall() {
    var params = {};
    location.hash.replace(/^#/, "").split("&").forEach(function (part) {
      var kv = part.split("=");
      if (kv.length === 2) { params[kv[0]] = Number(kv[1]); }
    });
    if (!isFinite(params.level) || !isFinite(params.x) || !isFinite(params.y)) { return false; }
    for (var k = 0; k < lods.length; k++) {
      if (lods[k].level === params.level) {
        view.i = k; view.x = params.x; view.y = params.y;
        return true;
      }
    }
    return false;
  }

  function hide(event) { event.target.style.visibility = "hidden"; }

  function fmt(n, digits) {
    return n.toLocaleString("en-US", { maximumFractionDigits: digits });
  }

  function showStatus(shown) {
    var lod = lods[view.i];
    var text = "level " + lod.level + " · 1:" + fmt(lod.scale, 0) + " · " +
      fmt(lod.resolution, 6) + " " + units + "/px · " + shown + " tile slots";
    if (pointer) { text += " · x " + fmt(pointer.x, 3) + ", y " + fmt(pointer.y, 3); }
    status.textContent = text;
  }

  function markLevel() {
    var items = levelList.children;
    for (var k = 0; k < items.length; k++) {
      items[k].classList.toggle("current", Number(items[k].dataset.index) === view.i);
    }
  }

  /* Zoom to level index i, keeping the map point under (px, py) — or the centre — in place. */
  function zoomTo(i, px, py) {
    i = Math.max(0, Math.min(lods.length - 1, i));
    if (i === view.i) { return; }
    var s = size(), before = lods[view.i].resolution, after = lods[i].resolution;
    if (px === undefined) { px = s.w / 2; py = s.h / 2; }
    var mx = view.x + (px - s.w / 2) * before, my = view.y - (py - s.h / 2) * before;
    view.x = mx - (px - s.w / 2) * after;
    view.y = my + (py - s.h / 2) * after;
    view.i = i;
    render();
  }

  function toMap(event) {
    var box = map.getBoundingClientRect(), s = size(), r = lods[view.i].resolution;
    return { px: event.clientX - box.left, py: event.clientY - box.top,
             x: view.x + (event.clientX - box.left - s.w / 2) * r,
             y: view.y - (event.clientY - box.top - s.h / 2) * r };
  }

  // -- interaction ---------------------------------------------------------------------------

  var drag = null;
  map.addEventListener("pointerdown", function (event) {
    drag = { x: event.clientX, y: event.clientY };
    map.setPointerCapture(event.pointerId);
    map.classList.add("dragging");
  });
  map.addEventListener("pointermove", function (event) {
    pointer = toMap(event);
    if (drag) {
      var r = lods[view.i].resolution;
      view.x -= (event.clientX - drag.x) * r;
      view.y += (event.clientY - drag.y) * r;
      drag = { x: event.clientX, y: event.clientY };
      render();
    } else {
      showStatus(layer.children.length);
    }
  });
  function endDrag() { drag = null; map.classList.remove("dragging"); }
  map.addEventListener("pointerup", endDrag);
  map.addEventListener("pointercancel", endDrag);
  map.addEventListener("wheel", function (event) {
    event.preventDefault();
    var at = toMap(event);
    zoomTo(view.i + (event.deltaY < 0 ? 1 : -1), at.px, at.py);
  }, { passive: false });
  map.addEventListener("dblclick", function (event) {
    var at = toMap(event);
    zoomTo(view.i + 1, at.px, at.py);
  });
  map.addEventListener("keydown", function (event) {
    var step = 64 * lods[view.i].resolution;
    var moves = { ArrowLeft: [-step, 0], ArrowRight: [step, 0], ArrowUp: [0, step],
                  ArrowDown: [0, -step] };
    if (moves[event.key]) {
      view.x += moves[event.key][0];
      view.y += moves[event.key][1];
      render();
    } else if (event.key === "+" || event.key === "=") {
      zoomTo(view.i + 1);
    } else if (event.key === "-") {
      zoomTo(view.i - 1);
    } else if (event.key === "0") {
      fullView();
      render();
    } else if (event.key === "d") {
      fullView(dataExtent());
      render();
    } else {
      return;
    }
    event.preventDefault();
  });
  document.getElementById("zoom-in").onclick = function () { zoomTo(view.i + 1); };
  document.getElementById("zoom-out").onclick = function () { zoomTo(view.i - 1); };
  document.getElementById("zoom-full").onclick = function () { fullView(); render(); };
  document.getElementById("zoom-data").onclick = function () { fullView(dataExtent()); render(); };
  window.addEventListener("resize", render);
  window.addEventListener("hashchange", function () { if (recall()) { render(); } });

  // -- the side panel --------------------------------------------------------------------------

  function item(parent, text, href) {
    var li = document.createElement("li");
    if (href) {
      var a = document.createElement("a");
      a.href = href;
      a.textContent = text;
      li.appendChild(a);
    } else {
      li.textContent = text;
    }
    parent.appendChild(li);
    return li;
  }

  lods.forEach(function (lod, index) {
    var li = item(levelList, "L" + lod.level + "  1:" + fmt(lod.scale, 0));
    li.dataset.index = String(index);
    li.title = fmt(lod.resolution, 8) + " " + units + " per pixel";
    li.onclick = function () { zoomTo(index); };
  });
  var sr = service.spatialReference || {};
  document.getElementById("about").textContent =
    (config.storage || "tile cache") + " · wkid " + (sr.latestWkid || sr.wkid || "?") + " · " +
    tileW + "×" + tileH + " px " + (info.format || "") + " · " + lods.length + " level(s) with tiles";
  var links = document.getElementById("links");
  item(links, "MapServer JSON", config.serviceUrl + "?f=pjson");
  item(links, "tile/{level}/{row}/{col}", tileUrl(lods[0].level, 0, 0));
  if (config.xyz) { item(links, "XYZ /{z}/{x}/{y}", "/" + config.xyz + "/0/0"); }
  item(links, "WMTS capabilities", config.serviceUrl + "/WMTS/1.0.0/WMTSCapabilities.xml");

  if (!recall()) {
    fullView(dataExtent());
    // the map's size may be final only once the page has loaded: fit again if nobody moved it
    var first = { i: view.i, x: view.x, y: view.y };
    window.addEventListener("load", function () {
      if (view.i === first.i && view.x === first.x && view.y === first.y) {
        fullView(dataExtent());
        render();
      }
    });
  }
  render();
  window.cacheorchPreview = { view: view, lods: lods, zoomTo: zoomTo, render: render };
})();

/*
 * cacheorch workbench: the page over the JSON API (docs/workbench-api.md); it uses nothing else.
 *
 * The map is OpenLayers (vendored, static/vendor/) in the service's own spatial reference and
 * tiling scheme: a Projection made from the service's units and a TileGrid from its origin, tile
 * size and resolutions, so no reprojection happens and any grid works. Areas are drawn in those
 * coordinates and sent as GeoJSON geometries; the server turns them into the CLI's --aoi specs.
 */
(function () {
  "use strict";

  var TOKEN = new URLSearchParams(location.search).get("token") || "";
  var COLOURS = ["#ff00c8", "#00a0ff", "#ff8c00", "#7a00ff", "#00b050"];
  var $ = function (id) { return document.getElementById(id); };

  var state = {
    service: null,      // the opened source (describe()); for a map, the layer drawn
    map: null,          // the opened map (POST /api/sources with "map"), else null
    lastMap: null,      // the map job started last ("m1")
    ticked: new Set(),
    tiers: [],          // {levels: "0-5", area: {kind, geometry}, buffer: ""}
    active: 0,
    lastJob: null,
    jobs: [],
  };
  var map = null, tileLayer = null, areaSource = null, gridSource = null, bufferSource = null;
  var extentSource = null, draw = null, modify = null;
  var geojson = new ol.GeoJSON();

  // -- API ---------------------------------------------------------------------------------------

  function api(method, path, body) {
    var options = { method: method, headers: { "X-Workbench-Token": TOKEN } };
    if (body instanceof FormData) {
      options.body = body;
    } else if (body !== undefined) {
      options.headers["Content-Type"] = "application/json";
      options.body = JSON.stringify(body);
    }
    return fetch(path, options).then(function (response) {
      return response.json().catch(function () { return {}; }).then(function (data) {
        if (!response.ok) { throw new Error(data.error || ("HTTP " + response.status)); }
        return data;
      });
    });
  }

  function showError(err) { $("error").textContent = err ? String(err.message || err) : ""; }
  function status(text) { $("status").textContent = text; }

  function fmtInt(n) { return n == null ? "" : Number(n).toLocaleString("en-US"); }
  function fmtBytes(n) {
    if (n == null) { return ""; }
    var units = ["B", "KB", "MB", "GB", "TB"], i = 0;
    while (n >= 1000 && i < units.length - 1) { n /= 1000; i++; }
    return (i ? n.toFixed(1) : n.toFixed(0)) + " " + units[i];
  }
  function fmtSeconds(s) {
    if (s == null) { return "–"; }
    if (s < 90) { return Math.round(s) + " s"; }
    if (s < 5400) { return Math.round(s / 60) + " min"; }
    return (s / 3600).toFixed(1) + " h";
  }

  // -- the selection (what the API's plan, jobs and command calls take) --------------------------

  function selection(extra) {
    var sel = {
      source: state.service && state.service.id,
      levels: Array.from(state.ticked).sort(function (a, b) { return a - b; }),
      tiers: state.tiers.map(function (t) {
        return { levels: t.levels, area: t.area, buffer: t.buffer };
      }),
      exporter: $("exporter").value, output: $("output").value, mode: $("mode").value,
    };
    if (state.map) { sel.map = state.map.id; }  // the levels and tiers apply to every layer
    return Object.assign(sel, extra || {});
  }

  // -- 1. open a source --------------------------------------------------------------------------

  function openSource(ev) {
    ev.preventDefault();
    showError(null);
    status("opening…");
    var asMap = $("open-kind").value === "map";
    var body = { token: $("token").value, username: $("username").value,
                 password: $("password").value, referer: $("referer").value };
    body[asMap ? "map" : "location"] = $("location").value;
    api("POST", "/api/sources", body).then(function (svc) {
      $("password").value = "";
      if (asMap || state.map) { $("output").value = ""; }  // a map's output is a folder
      state.map = asMap ? svc : null;
      if (asMap) {
        showMapLayers(svc);
        svc = Object.assign({}, svc.view, { default_output: svc.default_output });
      }
      $("map-info").hidden = !asMap;
      mapDefaultExporter(asMap);
      state.service = svc;
      state.ticked = new Set();
      var levels = svc.levels.map(function (l) { return l.level; });
      state.tiers = [{ levels: Math.min.apply(null, levels) + "-" + Math.max.apply(null, levels),
                       area: { kind: "extent" }, buffer: "" }];
      state.active = 0;
      if (!$("output").value) { $("output").value = svc.default_output; }
      showService(svc);
      buildScales(svc);
      buildMap(svc);
      renderTiers();
      ["scales-section", "tiers-section", "export-section"].forEach(function (id) {
        $(id).hidden = false;
      });
      status("opened " + svc.location);
    }).catch(function (err) { showError(err); status(""); });
  }

  // -- a map: its layers in order, the one drawn, each one's counts ------------------------------

  function showMapLayers(m) {
    $("map-title").textContent = "Map " + m.title + " (" + m.format + "): " + m.layers.length +
      " layers, " + m.exported + " exported, " + m.skipped + " skipped";
    var body = $("map-layers").tBodies[0];
    body.replaceChildren();
    m.layers.forEach(function (layer) {
      var tr = body.insertRow();
      tr.dataset.title = layer.title;
      tr.dataset.status = layer.status;
      tr.className = layer.status;
      var pick = tr.insertCell();
      if (layer.source) {
        var radio = document.createElement("input");
        radio.type = "radio"; radio.name = "view-layer"; radio.className = "view";
        radio.checked = m.view && layer.source === m.view.id;
        radio.addEventListener("change", function () { viewLayer(layer.source); });
        pick.appendChild(radio);
      }
      tr.insertCell().textContent = (layer.group.length ? layer.group.join(" / ") + " / " : "") +
        layer.title;
      tr.insertCell().textContent = layer.role;
      tr.insertCell().textContent = layer.visibility ? "yes" : "no";
      var what = tr.insertCell();
      what.className = "why";
      what.textContent = layer.status === "exported" ? "exported" : layer.status + ": " + layer.reason;
      tr.insertCell().className = "tiles";
    });
  }

  function mapDefaultExporter(on) {  // a map's exporter defaults as run --map's (gpkg for QGIS)
    var select = $("exporter"), option = select.querySelector('option[value=""]');
    if (on && !option) {
      option = document.createElement("option");
      option.value = ""; option.textContent = "the map's default (as run --map)";
      select.insertBefore(option, select.firstChild);
    }
    if (on) { option.selected = true; } else if (option) {
      option.remove();
      select.value = "tpkx";
    }
  }

  function viewLayer(sourceId) {
    showError(null);
    api("GET", "/api/sources/" + sourceId).then(function (svc) {
      state.service = svc;
      showService(svc);
      buildScales(svc);
      buildMap(svc);
      refreshTicks();
      status("drawing " + svc.name);
    }).catch(showError);
  }

  function fillMapCounts(r) {
    r.layers.forEach(function (layer) {
      var tr = document.querySelector('#map-layers tr[data-title="' + CSS.escape(layer.title) + '"]');
      if (tr) {
        tr.querySelector(".tiles").textContent = layer.status === "planned" ?
          fmtInt(layer.tiles_planned) : "";
        if (layer.status !== "planned") {
          tr.querySelector(".why").textContent = layer.status + ": " + (layer.reason || layer.error);
        } else { tr.querySelector(".why").textContent = "exported → " + layer.output; }
      }
      if (layer.source === state.service.id && layer.levels) {
        layer.levels.forEach(function (lv) {
          var row = document.querySelector('#scales tr[data-level="' + lv.level + '"]');
          if (row) { row.querySelector(".tiles").textContent = fmtInt(lv.tiles_planned); }
        });
      }
    });
    $("totals").textContent = fmtInt(r.tiles) + " tiles in " + r.exported +
      " exported layer(s) · planned in " + r.planner_ms + " ms";
    $("totals").dataset.plannerMs = r.planner_ms;
    $("totals").dataset.tiles = r.tiles;
  }

  function showService(svc) {
    var dl = document.createElement("dl");
    var rows = [["name", svc.name], ["kind", svc.kind], ["description", svc.description],
                ["spatial ref.", svc.spatial_reference],
                ["tile size", svc.tile_size[0] + "×" + svc.tile_size[1] + " px"],
                ["format", svc.format], ["levels", svc.levels.length]];
    rows.forEach(function (r) {
      if (r[1] === "" || r[1] == null) { return; }
      var dt = document.createElement("dt"), dd = document.createElement("dd");
      dt.textContent = r[0]; dd.textContent = r[1];
      dl.appendChild(dt); dl.appendChild(dd);
    });
    $("service-info").replaceChildren(dl);
  }

  // -- 2. the scales table -----------------------------------------------------------------------

  function buildScales(svc) {
    var body = $("scales").tBodies[0];
    body.replaceChildren();
    svc.levels.forEach(function (l) {
      var tr = document.createElement("tr");
      tr.dataset.level = l.level;
      if (!l.tiled) { tr.className = "untiled"; }
      var box = document.createElement("input");
      box.type = "checkbox"; box.className = "tick"; box.dataset.level = l.level;
      box.disabled = !l.tiled;
      box.addEventListener("change", function () {
        if (box.checked) { state.ticked.add(l.level); } else { state.ticked.delete(l.level); }
        refreshTicks();
      });
      var cells = [box, String(l.level), fmtInt(Math.round(l.scale)),
                   l.resolution.toPrecision(8), l.tiled ? "yes" : "no", "", ""];
      cells.forEach(function (c, i) {
        var td = document.createElement("td");
        if (i === 5) { td.className = "tiles"; }
        if (i === 6) { td.className = "size"; }
        if (typeof c === "string") { td.textContent = c; } else { td.appendChild(c); }
        tr.appendChild(td);
      });
      body.appendChild(tr);
    });
    var tiled = svc.levels.filter(function (l) { return l.tiled; });
    $("range-from").value = tiled.length ? tiled[0].level : 0;
    $("range-to").value = tiled.length ? tiled[Math.min(tiled.length - 1, 5)].level : 0;
  }

  function refreshTicks() {
    Array.from(document.querySelectorAll("#scales tbody tr")).forEach(function (tr) {
      var level = Number(tr.dataset.level), on = state.ticked.has(level);
      tr.classList.toggle("ticked", on);
      tr.querySelector("input").checked = on;
      if (!on) { tr.querySelector(".tiles").textContent = ""; tr.querySelector(".size").textContent = ""; }
    });
    scheduleCounts();
  }

  function selectRange() {
    var a = Number($("range-from").value), b = Number($("range-to").value);
    state.service.levels.forEach(function (l) {
      if (l.tiled && l.level >= Math.min(a, b) && l.level <= Math.max(a, b)) { state.ticked.add(l.level); }
    });
    refreshTicks();
  }

  function applyPreset() {
    var preset = $("preset").value, value = $("preset-value").value.trim();
    var policy = preset + (value ? ":" + value : "");
    showError(null);
    api("POST", "/api/select", selection({ policy: policy, levels: null })).then(function (r) {
      state.ticked = new Set(r.levels);
      refreshTicks();
      status(r.notes.join("; "));
    }).catch(showError);
  }

  var countTimer = null, countSeq = 0;
  function scheduleCounts() {
    clearTimeout(countTimer);
    countTimer = setTimeout(updateCounts, 50);
  }

  function updateCounts() {
    if (!state.service) { return; }
    if (!state.ticked.size) { $("totals").textContent = "no level ticked"; return; }
    var seq = ++countSeq;
    api("POST", "/api/plan", selection()).then(function (r) {
      if (seq !== countSeq) { return; }
      showError(null);
      if (state.map) { fillMapCounts(r); return; }  // per layer, as plan --map
      fillCounts(r, false);
      return api("POST", "/api/plan", selection({ estimate: true }));
    }).then(function (r) {
      if (r && seq === countSeq) { fillCounts(r, true); }
    }).catch(function (err) { if (seq === countSeq) { showError(err); } });
  }

  function fillCounts(r, sized) {
    var bytes = 0, known = sized;
    if (bufferSource && !sized) {  // the buffered areas, as the planner grew them
      bufferSource.clear();
      r.buffered.forEach(function (b) {
        bufferSource.addFeature(new ol.Feature({ geometry: geojson.readGeometry(b.geometry),
                                                 tier: b.tier, kind: "buffer" }));
      });
    }
    r.levels.forEach(function (lv) {
      var tr = document.querySelector('#scales tr[data-level="' + lv.level + '"]');
      if (!tr) { return; }
      tr.querySelector(".tiles").textContent = fmtInt(lv.tiles);
      if (sized) {
        tr.querySelector(".size").textContent = lv.bytes == null ? "?" : "≈ " + fmtBytes(lv.bytes);
        if (lv.bytes == null) { known = false; } else { bytes += lv.bytes; }
      }
    });
    $("totals").textContent = fmtInt(r.tiles) + " tiles" +
      (sized ? (known ? ", ≈ " + fmtBytes(bytes) : ", size partly unknown") : "") +
      " · planned in " + r.planner_ms + " ms";
    $("totals").dataset.plannerMs = r.planner_ms;
    $("totals").dataset.tiles = r.tiles;
  }

  // -- 3. the map and the tiers ------------------------------------------------------------------

  function olUnits(units) {
    if (/degree/i.test(units)) { return "degrees"; }
    if (/usfoot|us_?feet/i.test(units)) { return "us-ft"; }
    if (/feet|foot/i.test(units)) { return "ft"; }
    return "m";
  }

  function buildMap(svc) {
    var lods = svc.levels.filter(function (l) { return l.tiled; });
    if (!lods.length) { lods = svc.levels.slice(); }
    lods.sort(function (a, b) { return b.resolution - a.resolution; });
    var resolutions = lods.map(function (l) { return l.resolution; });
    var extent = svc.extent || svc.grid_bounds;
    var projection = new ol.Projection({
      code: "cacheorch:" + (svc.latest_wkid || svc.wkid || "custom"),
      units: olUnits(svc.units), metersPerUnit: svc.meters_per_unit,
      extent: svc.grid_bounds || extent || undefined,
    });
    var grid = new ol.TileGrid({
      origin: svc.origin, resolutions: resolutions, tileSize: svc.tile_size,
      extent: svc.grid_bounds || undefined,
    });
    var base = "/api/sources/" + svc.id + "/tile/";
    var tileSource = new ol.TileImage({
      projection: projection, tileGrid: grid, transition: 0,
      tileUrlFunction: function (c) {
        return base + lods[c[0]].level + "/" + c[2] + "/" + c[1] + "?token=" + encodeURIComponent(TOKEN);
      },
    });
    tileSource.on("tileloadend", function () { map && map.getTargetElement().setAttribute("data-tiles-loaded", "yes"); });
    tileLayer = new ol.TileLayer({ source: tileSource });
    areaSource = new ol.VectorSource();
    gridSource = new ol.VectorSource();
    bufferSource = new ol.VectorSource();
    extentSource = new ol.VectorSource();
    var view = new ol.View({ projection: projection, resolutions: resolutions, constrainResolution: true });
    if (map) { map.setTarget(null); }
    $("map").replaceChildren();
    map = new ol.Map({
      target: "map", view: view,
      layers: [tileLayer,
               new ol.VectorLayer({ source: gridSource, style: new ol.Style({
                 stroke: new ol.Stroke({ color: "rgba(20,20,20,0.8)", width: 1 }) }) }),
               new ol.VectorLayer({ source: bufferSource, style: areaStyle }),
               new ol.VectorLayer({ source: extentSource, style: areaStyle }),
               new ol.VectorLayer({ source: areaSource, style: areaStyle })],
      controls: ol.defaultControls({ attribution: false }).extend([new ol.ScaleLine()]),
    });
    modify = new ol.Modify({ source: areaSource });  // drag a drawn area's vertices to edit it
    modify.on("modifyend", function (e) {
      e.features.forEach(function (feature) {
        var tier = state.tiers[feature.get("tier")];
        if (tier && tier.area.kind === "geojson") {
          tier.area = Object.assign({}, tier.area,
                                    { geometry: geojson.writeGeometryObject(feature.getGeometry()) });
        }
      });
      scheduleCounts();
    });
    map.addInteraction(modify);
    if (extent) { view.fit(extent, { size: map.getSize() || [800, 600] }); }
    else { view.setCenter(svc.origin); view.setResolution(resolutions[0]); }
    map.on("pointermove", function (e) {
      status("x " + e.coordinate[0].toFixed(2) + "  y " + e.coordinate[1].toFixed(2) +
             "  level " + lods[Math.max(0, resolutions.indexOf(view.getResolution()))].level);
    });
    drawAreas();
  }

  function areaStyle(feature) {
    var colour = COLOURS[feature.get("tier") % COLOURS.length];
    if (feature.get("kind") === "buffer") {
      return new ol.Style({ stroke: new ol.Stroke({ color: colour, width: 2, lineDash: [3, 4] }) });
    }
    var extentOnly = feature.get("kind") === "extent";
    return new ol.Style({
      stroke: new ol.Stroke({ color: colour, width: extentOnly ? 2 : 4,
                              lineDash: extentOnly ? [8, 6] : undefined }),
      fill: extentOnly ? undefined : new ol.Fill({ color: colour + "33" }),
    });
  }

  function drawAreas() {
    if (!areaSource) { return; }
    areaSource.clear();
    extentSource.clear();
    state.tiers.forEach(function (t, i) {
      if (t.area.kind === "geojson") {
        areaSource.addFeature(new ol.Feature({ geometry: geojson.readGeometry(t.area.geometry),
                                               tier: i, kind: t.area.kind }));
      } else if (state.service.extent) {
        extentSource.addFeature(new ol.Feature({ geometry: ol.polygonFromExtent(state.service.extent),
                                                 tier: i, kind: t.area.kind }));
      }
    });
  }

  function renderTiers() {
    var list = $("tiers");
    list.replaceChildren();
    state.tiers.forEach(function (t, i) {
      var li = document.createElement("li");
      li.style.setProperty("--tier", COLOURS[i % COLOURS.length]);
      li.className = i === state.active ? "active" : "";
      li.dataset.tier = i;
      var radio = document.createElement("input");
      radio.type = "radio"; radio.name = "active-tier"; radio.checked = i === state.active;
      radio.addEventListener("change", function () { state.active = i; $("buffer").value = t.buffer; renderTiers(); });
      var levels = document.createElement("input");
      levels.className = "levels"; levels.value = t.levels; levels.title = "levels of this tier, e.g. 0-5";
      levels.addEventListener("change", function () { t.levels = levels.value; scheduleCounts(); });
      var what = document.createElement("span");
      what.className = "area-kind";
      what.textContent = " " + (t.area.kind === "extent" ? "service extent" : (t.area.name || "drawn area")) +
        (t.buffer ? " + " + t.buffer : "");
      li.append("Tier " + (i + 1) + " ", radio, " levels ", levels, what);
      if (state.tiers.length > 1) {
        var remove = document.createElement("button");
        remove.type = "button"; remove.textContent = "×"; remove.title = "remove this tier";
        remove.addEventListener("click", function () {
          state.tiers.splice(i, 1); state.active = 0; renderTiers(); drawAreas(); scheduleCounts();
        });
        li.append(" ", remove);
      }
      list.appendChild(li);
    });
  }

  function addTier() {
    var ticked = Array.from(state.ticked).sort(function (a, b) { return a - b; });
    var levels = ticked.length ? ticked[ticked.length - 1] + "" : "";
    state.tiers.push({ levels: levels, area: { kind: "extent" }, buffer: "" });
    state.active = state.tiers.length - 1;
    $("buffer").value = "";
    renderTiers(); drawAreas(); scheduleCounts();
  }

  function setArea(area) {
    var tier = state.tiers[state.active];
    tier.area = area;
    renderTiers(); drawAreas(); scheduleCounts();
  }

  function startDraw(kind) {
    if (!map) { return; }
    if (draw) { map.removeInteraction(draw); draw = null; }
    modify.setActive(false);
    $("draw-polygon").classList.toggle("active", kind === "Polygon");
    $("draw-box").classList.toggle("active", kind === "Box");
    var options = { type: kind === "Box" ? "Circle" : "Polygon" };
    if (kind === "Box") { options.geometryFunction = ol.createBox(); }
    draw = new ol.Draw(options);
    draw.on("drawend", function (e) {
      var geometry = geojson.writeGeometryObject(e.feature.getGeometry());
      setArea({ kind: "geojson", geometry: geometry, name: kind === "Box" ? "rectangle" : "polygon" });
      setTimeout(function () {
        map.removeInteraction(draw); draw = null; modify.setActive(true);
        $("draw-polygon").classList.remove("active"); $("draw-box").classList.remove("active");
      }, 0);
    });
    map.addInteraction(draw);
    status(kind === "Box" ? "drag a rectangle on the map" :
           "click the corners of the polygon; double-click (or click the first corner) to finish");
  }

  function upload() {
    var file = $("upload").files[0];
    if (!file) { return; }
    var form = new FormData();
    form.append("file", file);
    showError(null);
    api("POST", "/api/sources/" + state.service.id + "/upload", form).then(function (r) {
      setArea({ kind: "geojson", geometry: r.geometry, name: r.name });
      status("area from " + r.name);
    }).catch(showError).finally(function () { $("upload").value = ""; });
  }

  function showGrid() {
    var level = Number($("grid-level").value);
    var tier = state.tiers[state.active];
    showError(null);
    gridSource.clear();
    api("POST", "/api/grid", selection({ tiers: [{ levels: String(level), area: tier.area, buffer: tier.buffer }],
                                         level: level }))
      .then(function (fc) {
        gridSource.addFeatures(geojson.readFeatures(fc));
        status(fmtInt(fc.tiles) + " tiles of level " + level + " in tier " + (state.active + 1));
      }).catch(showError);
  }

  // -- 4. export, progress, jobs -----------------------------------------------------------------

  function startExport() {
    showError(null);
    $("summary").replaceChildren();
    $("export").disabled = true;
    api("POST", "/api/jobs", selection()).then(function (job) {
      if (job.map_id) { state.lastMap = job.map_id; state.lastJob = null; showMapProgress(job); }
      else { state.lastJob = job.job_id; state.lastMap = null; showProgress(job); }
      refreshJobs();
    }).catch(function (err) { showError(err); $("export").disabled = false; });
  }

  function progressBox(job, id) {  // the progress of a job or a map job: buttons, status
    var running = job.status === "running";
    $("cancel").disabled = !running;
    $("export").disabled = running;
    var box = $("progress");
    box.dataset.status = job.status;
    box.dataset.jobId = id;
    return box;
  }

  function showProgress(job) {
    var running = job.status === "running", box = progressBox(job, job.job_id);
    var head = document.createElement("p");
    head.textContent = "Job " + job.job_id + " " + job.status + ": " + fmtInt(job.tiles_done) + " / " +
      fmtInt(job.tiles_planned) + " tiles · " + job.tiles_per_second + " tiles/s · ETA " +
      fmtSeconds(job.eta_s) + " · " + fmtInt(job.tiles_failed) + " failed" +
      (job.message ? " · " + job.message : "");
    var table = document.createElement("table");
    table.innerHTML = "<tr><th>level</th><th>written</th><th>missing</th><th>failed</th><th>size</th></tr>";
    job.levels.forEach(function (lv) {
      var tr = table.insertRow();
      [lv.level, fmtInt(lv.written), fmtInt(lv.missing), fmtInt(lv.failed), fmtBytes(lv.bytes)]
        .forEach(function (v) { tr.insertCell().textContent = v; });
    });
    box.replaceChildren(head, table);
    if (!running) { showSummary(job); }
  }

  function showMapProgress(job) {
    var running = job.status === "running", box = progressBox(job, job.map_id);
    var head = document.createElement("p");
    head.textContent = "Map job " + job.map_id + " " + job.status + ": " + fmtInt(job.tiles_done) +
      " / " + fmtInt(job.tiles_planned) + " tiles · " + job.tiles_per_second + " tiles/s · ETA " +
      fmtSeconds(job.eta_s) + (job.message ? " · " + job.message : "");
    box.replaceChildren(head);
    if (!running) { showMapJob(job.map_id); }
  }

  function showMapJob(mapId) {
    api("GET", "/api/jobs/" + mapId).then(function (record) {
      var box = $("summary");
      box.dataset.jobId = record.id;
      box.dataset.status = record.status;
      var p = document.createElement("p");
      p.textContent = "Map job " + record.id + " " + record.status + " → " + record.output + "/map.json";
      var table = document.createElement("table");
      table.id = "map-summary";
      table.innerHTML = "<tr><th>layer</th><th>status</th><th>output or reason</th><th>tiles</th></tr>";
      var jobs = {};
      record.layer_jobs.forEach(function (j) { jobs[j.job_id] = j; });
      record.layers.forEach(function (layer) {
        var tr = table.insertRow();
        tr.dataset.title = layer.title;
        tr.dataset.status = layer.status;
        var job = jobs[layer.job_id];
        [layer.title, layer.status, layer.output || layer.reason || layer.error || "",
         job ? fmtInt(job.tiles_written) : ""].forEach(function (v) { tr.insertCell().textContent = v; });
      });
      var row = document.createElement("div");
      row.className = "row";
      if (record.status !== "completed" && !(record.live && record.live.status === "running")) {
        row.append(button("Resume", "resume-map", function () { resumeMap(record.id); }));
      }
      box.replaceChildren(p, table, row);
    }).catch(showError);
  }

  function resumeMap(mapId) {
    showError(null);
    api("POST", "/api/jobs/" + mapId + "/resume").then(function (job) {
      state.lastMap = job.map_id; state.lastJob = null;
      $("summary").replaceChildren();
      showMapProgress(job);
      refreshJobs();
    }).catch(showError);
  }

  function showSummary(job) {
    var box = $("summary");
    box.dataset.jobId = job.job_id;
    var p = document.createElement("p");
    p.textContent = "Job " + job.job_id + " " + job.status + ": " + fmtInt(job.tiles_written) +
      " tiles written, " + fmtInt(job.tiles_missing) + " missing, " + fmtInt(job.tiles_failed) +
      " failed, " + fmtBytes(job.bytes) + (job.output ? " → " + job.output : "");
    var row = document.createElement("div");
    row.className = "row";
    if (job.status === "completed" || job.status === "partial") {
      row.append(button("Preview", "preview-" + job.job_id, function () { preview(job.job_id); }),
                 button("Verify", "verify-" + job.job_id, function () { verify(job.job_id); }));
    } else {
      row.append(button("Resume", "resume-current", function () { resume(job.job_id); }));
    }
    var out = document.createElement("p");
    out.id = "job-check";
    box.replaceChildren(p, row, out);
  }

  function button(text, id, onclick) {
    var b = document.createElement("button");
    b.type = "button"; b.textContent = text; b.id = id;
    b.addEventListener("click", onclick);
    return b;
  }

  function preview(jobId) {
    api("POST", "/api/jobs/" + jobId + "/preview").then(function (r) {
      var a = document.createElement("a");
      a.href = r.url; a.target = "_blank"; a.rel = "noopener"; a.textContent = "preview " + r.url;
      $("job-check").replaceChildren(a);
      window.open(r.url, "_blank", "noopener");
    }).catch(showError);
  }

  function verify(jobId) {
    $("job-check").textContent = "verifying…";
    api("POST", "/api/jobs/" + jobId + "/verify").then(function (r) {
      $("job-check").textContent = (r.ok ? "verified: " : "defects: ") + r.summary;
      $("job-check").dataset.ok = r.ok;
    }).catch(showError);
  }

  function cancel() {
    if (state.lastMap) {
      api("POST", "/api/jobs/" + state.lastMap + "/cancel").then(showMapProgress).catch(showError);
      return;
    }
    if (state.lastJob == null) { return; }
    api("POST", "/api/jobs/" + state.lastJob + "/cancel").then(showProgress).catch(showError);
  }

  function resume(jobId) {
    showError(null);
    api("POST", "/api/jobs/" + jobId + "/resume", {}).then(function (job) {
      state.lastJob = job.job_id;
      $("summary").replaceChildren();
      showProgress(job);
      refreshJobs();
    }).catch(showError);
  }

  function showJob(jobId) {
    showError(null);
    api("GET", "/api/jobs/" + jobId).then(function (job) {
      $("export-section").hidden = false;
      showSummary(job);
      $("summary").scrollIntoView();
    }).catch(showError);
  }

  function refreshJobs() {
    return api("GET", "/api/jobs").then(function (r) {
      var body = $("jobs").tBodies[0];
      body.replaceChildren();
      var byId = {}, owned = {}, order = [];
      r.jobs.forEach(function (job) { byId[job.id] = job; });
      r.maps.forEach(function (m) {  // a map job, then its layer jobs
        order.push({ map: m });
        m.jobs.forEach(function (id) { owned[id] = true; if (byId[id]) { order.push({ job: byId[id], layer: true }); } });
      });
      r.jobs.forEach(function (job) { if (!owned[job.id]) { order.push({ job: job }); } });
      order.forEach(function (item) {
        if (item.map) {
          var m = item.map, row = body.insertRow();
          row.dataset.jobId = m.id; row.dataset.status = m.status; row.className = "map-job";
          [m.id, m.status, m.jobs.length + " layer job(s)", m.output + " (map: " + m.title + ")"]
            .forEach(function (v) { row.insertCell().textContent = v; });
          var acts = row.insertCell();
          acts.append(button("Open", "show-" + m.id, function () {
            $("export-section").hidden = false; showMapJob(m.id);
          }));
          if (m.status === "interrupted" || m.status === "failed" || m.status === "partial") {
            acts.append(" ", button("Resume", "resume-" + m.id, function () { resumeMap(m.id); }));
          }
          return;
        }
        var job = item.job;
        var tr = body.insertRow();
        if (item.layer) { tr.className = "layer-job"; }
        tr.dataset.jobId = job.id;
        tr.dataset.status = job.status;
        tr.insertCell().textContent = (item.layer ? "└ " : "") + job.id;
        tr.insertCell().textContent = job.status;
        tr.insertCell().textContent = fmtInt(job.tiles_written) + " / " + fmtInt(job.tiles_planned);
        tr.insertCell().textContent = job.output || "";
        var actions = tr.insertCell();
        actions.append(button("Open", "show-" + job.id, function () { showJob(job.id); }));
        if (job.status === "interrupted" || job.status === "failed" || job.status === "partial") {
          actions.append(" ", button("Resume", "resume-" + job.id, function () { resume(job.id); }));
        }
      });
    }).catch(showError);
  }

  function listen() {
    var source = new EventSource("/api/events?token=" + encodeURIComponent(TOKEN));
    var finished = {};
    source.addEventListener("jobs", function (e) {
      var data = JSON.parse(e.data), live = data.live;
      (data.maps || []).forEach(function (job) {
        if (job.map_id === state.lastMap) { showMapProgress(job); }
        if (job.status !== "running" && !finished[job.map_id + job.status]) {
          finished[job.map_id + job.status] = true;
          refreshJobs();
        }
      });
      live.forEach(function (job) {
        if (job.job_id === state.lastJob) { showProgress(job); }
        if (job.status !== "running" && !finished[job.job_id + job.status]) {
          finished[job.job_id + job.status] = true;
          refreshJobs();
        }
      });
    });
  }

  function copyCommand() {
    showError(null);
    api("POST", "/api/command", selection()).then(function (r) {
      $("command").value = r.command; $("command").hidden = false;
      $("ini").value = r.ini; $("ini").hidden = false;
      $("command-note").textContent = r.note; $("command-note").hidden = false;
      if (navigator.clipboard) { navigator.clipboard.writeText(r.command).catch(function () {}); }
    }).catch(showError);
  }

  // -- start -------------------------------------------------------------------------------------

  function init() {
    $("open-form").addEventListener("submit", openSource);
    $("select-range").addEventListener("click", selectRange);
    $("clear-levels").addEventListener("click", function () { state.ticked.clear(); refreshTicks(); });
    $("apply-preset").addEventListener("click", applyPreset);
    $("add-tier").addEventListener("click", addTier);
    $("draw-polygon").addEventListener("click", function () { startDraw("Polygon"); });
    $("draw-box").addEventListener("click", function () { startDraw("Box"); });
    $("use-extent").addEventListener("click", function () { setArea({ kind: "extent" }); });
    $("upload").addEventListener("change", upload);
    $("buffer").addEventListener("change", function () {
      state.tiers[state.active].buffer = $("buffer").value.trim(); renderTiers(); scheduleCounts();
    });
    $("show-grid").addEventListener("click", showGrid);
    $("export").addEventListener("click", startExport);
    $("cancel").addEventListener("click", cancel);
    $("copy-command").addEventListener("click", copyCommand);
    $("refresh-jobs").addEventListener("click", refreshJobs);
    api("GET", "/api/info").then(function (info) {
      $("exporter").replaceChildren.apply($("exporter"), info.exporters.map(function (name) {
        var o = document.createElement("option"); o.textContent = name; o.selected = name === "tpkx"; return o;
      }));
      $("preset").replaceChildren.apply($("preset"), info.presets.map(function (p) {
        var o = document.createElement("option"); o.value = p.policy; o.dataset.example = p.example;
        o.textContent = p.label + (p.options.length ? " (" + p.options.join(", ") + ")" : ""); return o;
      }));
      var example = function () {
        var chosen = $("preset").selectedOptions[0];
        $("preset-value").placeholder = chosen && chosen.dataset.example ? "e.g. " + chosen.dataset.example : "no value";
      };
      $("preset").addEventListener("change", example);
      example();
      status("catalog " + info.catalog);
    }).catch(showError);
    refreshJobs();
    listen();
    setInterval(refreshJobs, 5000);
  }

  init();
})();

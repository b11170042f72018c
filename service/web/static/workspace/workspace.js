/* WeCare radiologist workspace: study viewer and mask editor (issue 29 items 1-2).
 *
 * Plain JavaScript, no library, no build step, nothing from another host (the site's CSP
 * allows scripts from this site only). Reads the workspace JSON named by the page
 * (data-src on #workspace), draws each frame at full resolution on a canvas with zoom and pan,
 * the AI lesion outlines (polygons, pixel-centre coordinates: vertex (x, y) is drawn at
 * (x + 0.5, y + 0.5) of the image grid), the Grad-CAM on demand, and for a radiologist the
 * editor: move / add / delete vertices, brush and eraser (painted on a raster of the frame,
 * then traced back to polygons here), undo / redo, several lesions, and the three answers
 * posted to the review endpoint with the session's CSRF token.
 */
(function () {
  "use strict";

  var root = document.getElementById("workspace");
  if (!root) return;

  // ---- small helpers ---------------------------------------------------------------------

  function el(tag, attrs, children) {
    var node = document.createElement(tag);
    if (attrs) {
      Object.keys(attrs).forEach(function (key) {
        var value = attrs[key];
        if (value === null || value === undefined || value === false) return;
        if (key === "text") node.textContent = value;
        else if (key === "class") node.className = value;
        else if (key.slice(0, 2) === "on") node.addEventListener(key.slice(2), value);
        else node.setAttribute(key, value === true ? "" : value);
      });
    }
    (children || []).forEach(function (child) {
      if (child === null || child === undefined) return;
      node.appendChild(typeof child === "string" ? document.createTextNode(child) : child);
    });
    return node;
  }

  function $(id) { return document.getElementById(id); }
  function clone(value) { return JSON.parse(JSON.stringify(value)); }
  function pct(p) { return (100 * p).toFixed(1) + " %"; }
  function clamp(v, lo, hi) { return Math.max(lo, Math.min(hi, v)); }

  // ---- geometry: polygons <-> raster (pixel centres) --------------------------------------

  /** Union of the polygons as a rows x columns 0/1 raster: a pixel is in when its centre is
   *  inside (even-odd per polygon), as dicom_io.polygons.polygons_to_mask. */
  function rasterize(polygons, rows, columns) {
    var raster = new Uint8Array(rows * columns);
    polygons.forEach(function (poly) {
      var n = poly.length;
      if (n < 3) return;
      var ys = poly.map(function (v) { return v[1]; });
      var y0 = Math.max(0, Math.ceil(Math.min.apply(null, ys)));
      var y1 = Math.min(rows - 1, Math.floor(Math.max.apply(null, ys)));
      for (var r = y0; r <= y1; r++) {
        var xs = [];
        for (var i = 0, j = n - 1; i < n; j = i++) {
          var a = poly[i], b = poly[j];
          if ((a[1] > r) !== (b[1] > r)) {
            xs.push(a[0] + ((r - a[1]) * (b[0] - a[0])) / (b[1] - a[1]));
          }
        }
        xs.sort(function (p, q) { return p - q; });
        for (var k = 0; k + 1 < xs.length; k += 2) {
          var c0 = Math.max(0, Math.ceil(xs[k]));
          var c1 = Math.min(columns - 1, Math.floor(xs[k + 1]));
          for (var c = c0; c <= c1; c++) raster[r * columns + c] = 1;
        }
      }
    });
    return raster;
  }

  /** 4-connected components of a raster: a label per pixel, and per component its first
   *  pixel in scan order (the topmost-left, where tracing starts) and its area. */
  function components(raster, rows, columns) {
    var label = new Int32Array(rows * columns);
    var found = [];
    var stack = [];
    for (var start = 0; start < raster.length; start++) {
      if (!raster[start] || label[start]) continue;
      var id = found.length + 1;
      var area = 0;
      label[start] = id;
      stack.push(start);
      while (stack.length) {
        var p = stack.pop();
        area++;
        var r = (p / columns) | 0, c = p - r * columns;
        var around = [
          r > 0 ? p - columns : -1, r < rows - 1 ? p + columns : -1,
          c > 0 ? p - 1 : -1, c < columns - 1 ? p + 1 : -1,
        ];
        for (var k = 0; k < 4; k++) {
          var q = around[k];
          if (q >= 0 && raster[q] && !label[q]) { label[q] = id; stack.push(q); }
        }
      }
      found.push({ id: id, first: start, area: area }); // scan order: start is topmost-left
    }
    return { label: label, list: found };
  }

  /** Outer boundary of one component along pixel edges (region kept on the right), as
   *  pixel-centre coordinates: corner (x, y) of the pixel grid is (x - 0.5, y - 0.5). */
  function traceOutline(label, id, first, rows, columns) {
    function inside(c, r) {
      return c >= 0 && r >= 0 && c < columns && r < rows && label[r * columns + c] === id;
    }
    var r0 = (first / columns) | 0, c0 = first - r0 * columns;
    var x = c0, y = r0, d = 0; // 0 right, 1 down, 2 left, 3 up
    var DX = [1, 0, -1, 0], DY = [0, 1, 0, -1];
    var points = [];
    var limit = 4 * (rows + 1) * (columns + 1);
    for (var step = 0; step < limit; step++) {
      var left, right;
      if (d === 0) { left = inside(x, y - 1); right = inside(x, y); }
      else if (d === 1) { left = inside(x, y); right = inside(x - 1, y); }
      else if (d === 2) { left = inside(x - 1, y); right = inside(x - 1, y - 1); }
      else { left = inside(x - 1, y - 1); right = inside(x, y - 1); }
      if (!right) d = (d + 1) % 4;
      else if (left) d = (d + 3) % 4;
      else {
        points.push([x - 0.5, y - 0.5]);
        x += DX[d]; y += DY[d];
        if (x === c0 && y === r0 && d === 3) break; // closed (start was reached going up)
        continue;
      }
      if (x === c0 && y === r0 && d === 0 && points.length) break;
    }
    return dropCollinear(points);
  }

  function dropCollinear(points) {
    var n = points.length;
    if (n < 4) return points;
    var out = [];
    for (var i = 0; i < n; i++) {
      var a = points[(i + n - 1) % n], b = points[i], c = points[(i + 1) % n];
      var cross = (b[0] - a[0]) * (c[1] - b[1]) - (b[1] - a[1]) * (c[0] - b[0]);
      if (cross !== 0) out.push(b);
    }
    return out;
  }

  function segmentDistance(p, a, b) {
    var dx = b[0] - a[0], dy = b[1] - a[1];
    var len2 = dx * dx + dy * dy;
    var t = len2 ? clamp(((p[0] - a[0]) * dx + (p[1] - a[1]) * dy) / len2, 0, 1) : 0;
    var qx = a[0] + t * dx, qy = a[1] + t * dy;
    return { d: Math.hypot(p[0] - qx, p[1] - qy), t: t, q: [qx, qy] };
  }

  /** Douglas-Peucker on a closed outline (split at the vertex farthest from the first). */
  function simplify(points, tolerance) {
    if (points.length < 8) return points;
    function dp(pts) {
      var a = pts[0], b = pts[pts.length - 1], worst = -1, at = 0;
      for (var i = 1; i < pts.length - 1; i++) {
        var d = segmentDistance(pts[i], a, b).d;
        if (d > worst) { worst = d; at = i; }
      }
      if (worst <= tolerance) return [a, b];
      var left = dp(pts.slice(0, at + 1));
      return left.slice(0, -1).concat(dp(pts.slice(at)));
    }
    var far = 0, best = -1;
    for (var i = 1; i < points.length; i++) {
      var d = Math.hypot(points[i][0] - points[0][0], points[i][1] - points[0][1]);
      if (d > best) { best = d; far = i; }
    }
    var first = dp(points.slice(0, far + 1));
    var second = dp(points.slice(far).concat([points[0]]));
    var out = first.slice(0, -1).concat(second.slice(0, -1));
    return out.length >= 3 ? out : points;
  }

  /** Raster back to outlines, largest first; specks under 4 pixels dropped (as the server). */
  function tracePolygons(raster, rows, columns) {
    var comps = components(raster, rows, columns);
    var out = [];
    comps.list.forEach(function (comp) {
      if (comp.area < 4) return;
      var outline = simplify(traceOutline(comps.label, comp.id, comp.first, rows, columns), 0.75);
      if (outline.length >= 3) out.push({ area: comp.area, poly: outline });
    });
    out.sort(function (a, b) { return b.area - a.area; });
    return out.map(function (item) {
      return item.poly.map(function (v) { return [round2(v[0]), round2(v[1])]; });
    });
  }

  function round2(v) { return Math.round(v * 100) / 100; }

  function pointInPolygon(p, poly) {
    var inside = false;
    for (var i = 0, j = poly.length - 1; i < poly.length; j = i++) {
      var a = poly[i], b = poly[j];
      if ((a[1] > p[1]) !== (b[1] > p[1]) &&
          p[0] < ((b[0] - a[0]) * (p[1] - a[1])) / (b[1] - a[1]) + a[0]) inside = !inside;
    }
    return inside;
  }

  // ---- state -------------------------------------------------------------------------------

  var ws = null;
  var state = {
    image: 0, frame: 1, scale: 1, tx: 0, ty: 0,
    overlay: "outline", opacity: 0.35, cam: false,
    tool: "select", brush: 8, selected: null, // {lesion, vertex|null}
    drawing: null, // the new lesion's vertices while placing them
    edits: {}, // "img:frame" -> {history: [lesions...], at: n}
    sent: null,
  };
  var images = {}; // url -> HTMLImageElement
  var canvas, ctx, statusLine, frameInfo;

  function current() { return ws.images[state.image]; }
  function key() { return state.image + ":" + state.frame; }
  function resultFor(image, frame) {
    for (var i = 0; i < image.results.length; i++) {
      if (image.results[i].frame === frame) return image.results[i];
    }
    return null;
  }
  /** The latest radiologist review's outlines of the shown frame, or null (none sent). */
  function reviewedLesions() {
    var result = resultFor(current(), state.frame);
    var review = result && result.review;
    if (!review || !review.frames) return null;
    for (var i = 0; i < review.frames.length; i++) {
      if (review.frames[i].frame === state.frame) return review.frames[i].lesions || [];
    }
    return null;
  }
  function localTime(iso) {
    try {
      return new Date(iso).toLocaleString("sv-SE", {
        timeZone: ws.time_zone, timeZoneName: "short", year: "numeric", month: "2-digit",
        day: "2-digit", hour: "2-digit", minute: "2-digit", second: "2-digit", hourCycle: "h23",
      });
    } catch (err) {
      return iso;
    }
  }
  function aiLesions(image, frame) {
    var result = resultFor(image, frame);
    return result ? clone(result.lesions) : [];
  }
  function editState() {
    var k = key();
    if (!state.edits[k]) {
      state.edits[k] = { history: [aiLesions(current(), state.frame)], at: 0 };
    }
    return state.edits[k];
  }
  function lesions() {
    var image = current();
    if (!ws.can_edit) return aiLesions(image, state.frame);
    var e = editState();
    return e.history[e.at];
  }
  function commit(next) {
    var e = editState();
    e.history = e.history.slice(0, e.at + 1);
    e.history.push(clone(next));
    e.at = e.history.length - 1;
    refreshEditButtons();
    draw();
  }
  function isEdited(imageIndex, frame) {
    var e = state.edits[imageIndex + ":" + frame];
    if (!e) return false;
    var ai = aiLesions(ws.images[imageIndex], frame);
    return JSON.stringify(e.history[e.at]) !== JSON.stringify(ai);
  }
  function undo() {
    var e = editState();
    if (e.at > 0) { e.at--; state.selected = null; refreshEditButtons(); draw(); }
  }
  function redo() {
    var e = editState();
    if (e.at < e.history.length - 1) { e.at++; state.selected = null; refreshEditButtons(); draw(); }
  }

  // ---- view transform ----------------------------------------------------------------------

  function toImage(sx, sy) { // canvas CSS pixels -> pixel-centre image coordinates
    return [(sx - state.tx) / state.scale - 0.5, (sy - state.ty) / state.scale - 0.5];
  }
  function toScreen(x, y) {
    return [(x + 0.5) * state.scale + state.tx, (y + 0.5) * state.scale + state.ty];
  }
  function fit() {
    var image = current();
    var w = canvas.clientWidth, h = canvas.clientHeight;
    state.scale = Math.min(w / image.columns, h / image.rows);
    state.tx = (w - image.columns * state.scale) / 2;
    state.ty = (h - image.rows * state.scale) / 2;
    draw();
  }
  function zoomAt(factor, sx, sy) {
    var s = clamp(state.scale * factor, 0.05, 40);
    factor = s / state.scale;
    state.tx = sx - (sx - state.tx) * factor;
    state.ty = sy - (sy - state.ty) * factor;
    state.scale = s;
    draw();
  }
  function actualSize() {
    zoomAt(1 / state.scale, canvas.clientWidth / 2, canvas.clientHeight / 2);
  }

  // ---- images ------------------------------------------------------------------------------

  function url(template, frame) { return template.replace("{frame}", String(frame)); }

  function loadImage(src) {
    var img = images[src];
    if (!img) {
      img = new Image();
      img.onload = function () { img.ready = true; draw(); };
      img.onerror = function () { img.failed = true; draw(); };
      img.src = src;
      images[src] = img;
    }
    return img;
  }
  function frameImage() {
    var image = current();
    if (state.cam && image.cam_url) return loadImage(url(image.cam_url, state.frame));
    return loadImage(url(image.frame_url, state.frame));
  }
  function preloadAround() {
    var image = current();
    for (var f = state.frame + 1; f <= Math.min(image.frames, state.frame + 3); f++) {
      loadImage(url(image.frame_url, f));
    }
  }

  // ---- drawing -----------------------------------------------------------------------------

  function sizeCanvas() {
    var dpr = window.devicePixelRatio || 1;
    var w = canvas.clientWidth, h = canvas.clientHeight;
    if (canvas.width !== Math.round(w * dpr) || canvas.height !== Math.round(h * dpr)) {
      canvas.width = Math.round(w * dpr);
      canvas.height = Math.round(h * dpr);
    }
    return dpr;
  }

  function tracePath(poly) {
    ctx.beginPath();
    poly.forEach(function (v, i) {
      var p = toScreen(v[0], v[1]);
      if (i === 0) ctx.moveTo(p[0], p[1]); else ctx.lineTo(p[0], p[1]);
    });
    ctx.closePath();
  }

  function draw() {
    if (!ws || !ws.images.length) return;
    var dpr = sizeCanvas();
    ctx.setTransform(1, 0, 0, 1, 0, 0);
    ctx.fillStyle = "#000";
    ctx.fillRect(0, 0, canvas.width, canvas.height);
    ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
    var image = current();
    var img = frameImage();
    ctx.imageSmoothingEnabled = state.scale < 2;
    if (img.ready) {
      ctx.drawImage(img, state.tx, state.ty, image.columns * state.scale, image.rows * state.scale);
    } else {
      ctx.fillStyle = "#9aa5b1";
      ctx.font = "14px system-ui, sans-serif";
      ctx.fillText(img.failed ? "Image not available" : "Loading frame " + state.frame + "…",
        16, 28);
    }
    var polys = lesions();
    if (ws.can_edit && state.overlay !== "hidden" && isEdited(state.image, state.frame)) {
      // The AI's own outline stays visible, faint, under the edited one.
      ctx.save();
      ctx.setLineDash([2, 3]);
      ctx.lineWidth = 1.5;
      ctx.strokeStyle = "rgba(255, 220, 0, 0.7)";
      aiLesions(current(), state.frame).forEach(function (poly) { tracePath(poly); ctx.stroke(); });
      ctx.restore();
    }
    if (state.overlay !== "hidden") {
      polys.forEach(function (poly, i) {
        if (poly.length < 2) return;
        tracePath(poly);
        var chosen = state.selected && state.selected.lesion === i;
        if (state.overlay === "fill") {
          ctx.fillStyle = "rgba(255, 60, 60, " + state.opacity + ")";
          ctx.fill();
        }
        ctx.lineWidth = chosen ? 3 : 2;
        ctx.strokeStyle = chosen ? "rgba(80, 200, 255, 0.95)"
          : "rgba(255, 220, 0, " + Math.max(state.opacity, 0.6) + ")";
        ctx.stroke();
      });
    }
    var reviewed = reviewedLesions();
    if (reviewed && state.overlay !== "hidden") {
      ctx.save();
      ctx.setLineDash([6, 4]);
      ctx.lineWidth = 2;
      ctx.strokeStyle = "rgba(60, 220, 120, 0.95)";
      reviewed.forEach(function (poly) { if (poly.length > 2) { tracePath(poly); ctx.stroke(); } });
      ctx.restore();
    }
    if (ws.can_edit && state.tool === "select") {
      polys.forEach(function (poly, i) {
        poly.forEach(function (v, j) {
          var p = toScreen(v[0], v[1]);
          var chosen = state.selected && state.selected.lesion === i &&
            state.selected.vertex === j;
          ctx.fillStyle = chosen ? "#50c8ff" : "#ffffff";
          ctx.strokeStyle = "#1d2733";
          ctx.lineWidth = 1;
          var s = chosen ? 5 : 3.5;
          ctx.fillRect(p[0] - s, p[1] - s, 2 * s, 2 * s);
          ctx.strokeRect(p[0] - s, p[1] - s, 2 * s, 2 * s);
        });
      });
    }
    if (state.drawing && state.drawing.length) {
      ctx.beginPath();
      state.drawing.forEach(function (v, i) {
        var p = toScreen(v[0], v[1]);
        if (i === 0) ctx.moveTo(p[0], p[1]); else ctx.lineTo(p[0], p[1]);
      });
      ctx.strokeStyle = "#50c8ff";
      ctx.lineWidth = 2;
      ctx.stroke();
    }
    if (state.painting && state.painting.raster) drawRaster(state.painting.raster);
    if (state.pointer && (state.tool === "brush" || state.tool === "eraser")) {
      var q = toScreen(state.pointer[0], state.pointer[1]);
      ctx.beginPath();
      ctx.arc(q[0], q[1], state.brush * state.scale, 0, 2 * Math.PI);
      ctx.strokeStyle = state.tool === "brush" ? "#50c8ff" : "#ff8a8a";
      ctx.lineWidth = 1.5;
      ctx.stroke();
    }
    drawScale(image);
  }

  function drawRaster(raster) {
    var image = current();
    var off = state.painting.canvas;
    if (!off) {
      off = state.painting.canvas = document.createElement("canvas");
      off.width = image.columns; off.height = image.rows;
    }
    var octx = off.getContext("2d");
    var data = octx.createImageData(image.columns, image.rows);
    for (var i = 0; i < raster.length; i++) {
      if (raster[i]) {
        data.data[4 * i] = 80; data.data[4 * i + 1] = 200; data.data[4 * i + 2] = 255;
        data.data[4 * i + 3] = 110;
      }
    }
    octx.putImageData(data, 0, 0);
    ctx.imageSmoothingEnabled = false;
    ctx.drawImage(off, state.tx, state.ty, image.columns * state.scale, image.rows * state.scale);
  }

  function drawScale(image) { // a 10 mm bar when the image is calibrated
    if (!image.pixel_spacing_mm) return;
    var px = 10 / image.pixel_spacing_mm[1] * state.scale;
    if (px < 20 || px > canvas.clientWidth / 2) return;
    var x = 16, y = canvas.clientHeight - 18;
    ctx.fillStyle = "rgba(0,0,0,0.5)";
    ctx.fillRect(x - 6, y - 18, px + 12, 26);
    ctx.strokeStyle = "#fff"; ctx.lineWidth = 2;
    ctx.beginPath(); ctx.moveTo(x, y); ctx.lineTo(x + px, y); ctx.stroke();
    ctx.fillStyle = "#fff"; ctx.font = "11px system-ui, sans-serif";
    ctx.fillText("10 mm", x, y - 6);
  }

  // ---- pointer interaction -----------------------------------------------------------------

  function hitVertex(sx, sy) {
    var polys = lesions(), best = null, bestD = 9;
    polys.forEach(function (poly, i) {
      poly.forEach(function (v, j) {
        var p = toScreen(v[0], v[1]);
        var d = Math.hypot(p[0] - sx, p[1] - sy);
        if (d < bestD) { bestD = d; best = { lesion: i, vertex: j }; }
      });
    });
    return best;
  }
  function hitEdge(sx, sy) {
    var polys = lesions(), best = null, bestD = 7;
    polys.forEach(function (poly, i) {
      for (var j = 0; j < poly.length; j++) {
        var a = toScreen(poly[j][0], poly[j][1]);
        var b = toScreen(poly[(j + 1) % poly.length][0], poly[(j + 1) % poly.length][1]);
        var hit = segmentDistance([sx, sy], a, b);
        if (hit.d < bestD) { bestD = hit.d; best = { lesion: i, after: j }; }
      }
    });
    return best;
  }
  function hitLesion(sx, sy) {
    var p = toImage(sx, sy), polys = lesions();
    for (var i = 0; i < polys.length; i++) if (pointInPolygon(p, polys[i])) return i;
    return null;
  }

  function canvasXY(event) {
    var rect = canvas.getBoundingClientRect();
    return [event.clientX - rect.left, event.clientY - rect.top];
  }

  var drag = null;

  function onPointerDown(event) {
    var xy = canvasXY(event);
    canvas.setPointerCapture(event.pointerId);
    var panning = event.button === 1 || event.shiftKey || !ws.can_edit || state.tool === "pan";
    if (!panning && state.tool === "select") {
      var v = hitVertex(xy[0], xy[1]);
      if (v) {
        state.selected = v;
        drag = { kind: "vertex", start: xy, moved: false, lesions: clone(lesions()) };
        refreshEditButtons(); draw();
        return;
      }
      var l = hitLesion(xy[0], xy[1]);
      state.selected = l === null ? null : { lesion: l, vertex: null };
      refreshEditButtons();
      draw();
    }
    if (!panning && (state.tool === "brush" || state.tool === "eraser")) {
      var image = current();
      var before = rasterize(lesions(), image.rows, image.columns);
      state.painting = { raster: before.slice(), before: before, last: null };
      paintAt(toImage(xy[0], xy[1]));
      draw();
      drag = { kind: "paint" };
      return;
    }
    if (!panning && state.tool === "new") {
      state.drawing = state.drawing || [];
      state.drawing.push(toImage(xy[0], xy[1]).map(round2));
      draw();
      return;
    }
    drag = { kind: "pan", start: xy, tx: state.tx, ty: state.ty };
    canvas.classList.add("panning");
  }

  function onPointerMove(event) {
    var xy = canvasXY(event);
    state.pointer = toImage(xy[0], xy[1]);
    if (!drag) {
      if (state.tool === "brush" || state.tool === "eraser") draw();
      return;
    }
    if (drag.kind === "pan") {
      state.tx = drag.tx + xy[0] - drag.start[0];
      state.ty = drag.ty + xy[1] - drag.start[1];
      draw();
    } else if (drag.kind === "vertex") {
      var image = current();
      var p = toImage(xy[0], xy[1]);
      var polys = lesions();
      var sel = state.selected;
      polys[sel.lesion][sel.vertex] = [
        round2(clamp(p[0], -0.5, image.columns - 0.5)),
        round2(clamp(p[1], -0.5, image.rows - 0.5)),
      ];
      drag.moved = true;
      draw();
    } else if (drag.kind === "paint") {
      paintAt(state.pointer);
      draw();
    }
  }

  function onPointerUp() {
    canvas.classList.remove("panning");
    if (!drag) return;
    if (drag.kind === "vertex" && drag.moved) {
      var moved = clone(lesions());
      // The live edit changed the current snapshot in place: put it back, then commit.
      var e = editState();
      e.history[e.at] = drag.lesions;
      commit(moved);
    } else if (drag.kind === "paint") {
      commit(afterPainting(state.painting));
      state.painting = null;
      state.selected = null;
      draw();
    }
    drag = null;
  }

  /** The frame's lesions after a brush or eraser stroke: outlines the stroke did not touch
   *  (nor come within a pixel of) keep their vertices; the rest is traced again. */
  function afterPainting(paint) {
    var image = current(), rows = image.rows, columns = image.columns;
    var changed = new Uint8Array(rows * columns);
    for (var i = 0; i < changed.length; i++) changed[i] = paint.before[i] !== paint.raster[i];
    var kept = [];
    var rest = paint.raster.slice();
    lesions().forEach(function (poly) {
      var own = rasterize([poly], rows, columns);
      for (var p = 0; p < own.length; p++) {
        if (!own[p]) continue;
        var r = (p / columns) | 0, c = p - r * columns;
        if (changed[p] || (r > 0 && changed[p - columns]) || (r < rows - 1 && changed[p + columns]) ||
            (c > 0 && changed[p - 1]) || (c < columns - 1 && changed[p + 1])) return;
      }
      kept.push(clone(poly));
      for (var q = 0; q < own.length; q++) if (own[q]) rest[q] = 0;
    });
    return kept.concat(tracePolygons(rest, rows, columns));
  }

  function paintAt(p) {
    var image = current(), paint = state.painting;
    var value = state.tool === "brush" ? 1 : 0;
    var from = paint.last || p;
    var steps = Math.max(1, Math.ceil(Math.hypot(p[0] - from[0], p[1] - from[1]) / 1.5));
    var r = state.brush;
    for (var s = 0; s <= steps; s++) {
      var cx = from[0] + ((p[0] - from[0]) * s) / steps;
      var cy = from[1] + ((p[1] - from[1]) * s) / steps;
      for (var y = Math.max(0, Math.ceil(cy - r)); y <= Math.min(image.rows - 1, cy + r); y++) {
        for (var x = Math.max(0, Math.ceil(cx - r)); x <= Math.min(image.columns - 1, cx + r); x++) {
          if ((x - cx) * (x - cx) + (y - cy) * (y - cy) <= r * r) {
            paint.raster[y * image.columns + x] = value;
          }
        }
      }
    }
    paint.last = p;
  }

  function onDoubleClick(event) {
    if (!ws.can_edit) return;
    var xy = canvasXY(event);
    if (state.tool === "new") { finishNewLesion(); return; }
    if (state.tool !== "select" || hitVertex(xy[0], xy[1])) return;
    var edge = hitEdge(xy[0], xy[1]);
    if (!edge) return;
    var polys = clone(lesions());
    polys[edge.lesion].splice(edge.after + 1, 0, toImage(xy[0], xy[1]).map(round2));
    state.selected = { lesion: edge.lesion, vertex: edge.after + 1 };
    commit(polys);
  }

  function onWheel(event) {
    event.preventDefault();
    var xy = canvasXY(event);
    zoomAt(event.deltaY < 0 ? 1.15 : 1 / 1.15, xy[0], xy[1]);
  }

  // ---- editing actions ---------------------------------------------------------------------

  function deleteVertex() {
    var sel = state.selected;
    if (!sel || sel.vertex === null) return;
    var polys = clone(lesions());
    if (polys[sel.lesion].length <= 3) {
      say("A lesion needs at least 3 vertices: delete the lesion instead.", "warn");
      return;
    }
    polys[sel.lesion].splice(sel.vertex, 1);
    state.selected = { lesion: sel.lesion, vertex: null };
    commit(polys);
  }
  function deleteLesion() {
    var sel = state.selected;
    if (!sel) return;
    var polys = clone(lesions());
    polys.splice(sel.lesion, 1);
    state.selected = null;
    commit(polys);
  }
  function resetToAi() {
    state.selected = null;
    commit(aiLesions(current(), state.frame));
  }
  function finishNewLesion() {
    // A double-click also adds its two clicks: drop points on top of the previous one.
    var pts = (state.drawing || []).filter(function (v, i, all) {
      return i === 0 || Math.hypot(v[0] - all[i - 1][0], v[1] - all[i - 1][1]) > 0.5;
    });
    state.drawing = null;
    if (pts.length >= 3) {
      var polys = clone(lesions());
      polys.push(pts);
      state.selected = { lesion: polys.length - 1, vertex: null };
      commit(polys);
      setTool("select");
    } else {
      say("A new lesion needs at least 3 points: click around it, then double-click.", "warn");
      draw();
    }
  }

  // ---- sending -----------------------------------------------------------------------------

  function editedFrames() {
    var out = [];
    for (var f = 1; f <= current().frames; f++) {
      if (isEdited(state.image, f)) out.push(f);
    }
    return out;
  }

  function payload(action) {
    var image = current();
    var label = $("ws-label").value || null;
    var frames = [];
    if (action === "edit") {
      var list = editedFrames();
      if (!list.length) list = [state.frame];
      frames = list.map(function (f) {
        var e = state.edits[state.image + ":" + f];
        return { frame: f, lesions: e ? e.history[e.at] : aiLesions(image, f) };
      });
    }
    var fromAi = frames.every(function (item) {
      return aiLesions(image, item.frame).length > 0;
    });
    return {
      sop_instance_uid: image.sop_instance_uid,
      action: action,
      origin: action === "edit" && !fromAi ? "scratch" : "ai",
      label: label,
      frames: frames,
    };
  }

  function describe(action, body) {
    var image = "image " + current().index;
    if (action === "accept") return "Accept the AI result of " + image + " and send it?";
    if (action === "reject") return "Send \u201cno lesion\u201d for " + image + "?";
    var n = body.frames.map(function (f) { return f.frame; }).join(", ");
    var count = body.frames.reduce(function (s, f) { return s + f.lesions.length; }, 0);
    return "Send the corrected outline" + (count === 1 ? "" : "s") + " (" + count +
      " lesion" + (count === 1 ? "" : "s") + ", frame " + n + ") of " + image + "?";
  }

  function ask(action) {
    var body = payload(action);
    var box = $("ws-confirm");
    box.innerHTML = "";
    box.appendChild(el("span", { text: describe(action, body) }));
    box.appendChild(el("button", { type: "button", id: "ws-confirm-yes", class: "primary",
      text: "Confirm and send", onclick: function () { box.hidden = true; send(body); } }));
    box.appendChild(el("button", { type: "button", id: "ws-confirm-no", text: "Cancel",
      onclick: function () { box.hidden = true; } }));
    box.hidden = false;
  }

  function send(body) {
    say("Sending…", "info");
    var headers = { "Content-Type": "application/json", "Accept": "application/json" };
    if (ws.csrf_token) headers["X-CSRF-Token"] = ws.csrf_token;
    fetch(ws.review_url, {
      method: "POST", headers: headers, body: JSON.stringify(body), credentials: "same-origin",
    }).then(function (response) {
      return response.text().then(function (text) {
        var data = null;
        try { data = JSON.parse(text); } catch (err) { data = null; }
        if (!response.ok) {
          say("Refused (" + response.status + "): " + errorText(data, text), "error");
          return;
        }
        state.sent = data;
        var parts = ["Sent."];
        if (data && data.seg_sop_instance_uid) parts.push("Corrected SEG " + data.seg_sop_instance_uid);
        if (data && data.sr_sop_instance_uid) parts.push("SR " + data.sr_sop_instance_uid);
        if (data && data.outputs) {
          data.outputs.forEach(function (o) {
            var dests = (o.destinations || []).map(function (d) {
              return typeof d === "string" ? d : (d.destination || d.name || JSON.stringify(d));
            });
            if (dests.length) parts.push(o.kind.toUpperCase() + " queued for " + dests.join(", "));
          });
        }
        say(parts.join(" \u00b7 "), "ok");
        state.selected = null;
        reload();
      });
    }).catch(function (err) {
      say("Not sent: " + err, "error");
    });
  }

  /** Fetch the workspace again (after a send) and take its per-frame results and reviews. */
  function reload() {
    var src = root.getAttribute("data-src");
    if (!src) return;
    fetch(src, { headers: { Accept: "application/json" }, credentials: "same-origin" })
      .then(function (response) { return response.ok ? response.json() : null; })
      .then(function (fresh) {
        if (!fresh) return;
        fresh.images.forEach(function (image, i) {
          if (ws.images[i] && ws.images[i].sop_instance_uid === image.sop_instance_uid) {
            ws.images[i].results = image.results;
          }
        });
        renderFrameInfo();
        draw();
      });
  }

  function errorText(data, text) {
    if (!data) return text || "no answer";
    var detail = data.detail;
    if (typeof detail === "string") return detail;
    if (Array.isArray(detail)) {
      return detail.map(function (d) {
        return (d.loc ? d.loc.join(".") + ": " : "") + (d.msg || JSON.stringify(d));
      }).join("; ");
    }
    return JSON.stringify(data);
  }

  function say(text, kind) {
    statusLine.textContent = text;
    statusLine.className = "ws-status " + (kind || "info");
  }

  // ---- frames and panels -------------------------------------------------------------------

  function setFrame(frame) {
    var image = current();
    state.frame = clamp(frame, 1, image.frames);
    state.selected = null;
    state.drawing = null;
    $("ws-frame").value = String(state.frame);
    $("ws-frame-label").textContent = "Frame " + state.frame + " / " + image.frames;
    preloadAround();
    renderFrameInfo();
    refreshEditButtons();
    draw();
  }
  function jumpLesion(step) {
    var frames = current().lesion_frames;
    if (!frames.length) return;
    var next = null;
    if (step > 0) {
      next = frames.find(function (f) { return f > state.frame; });
      if (next === undefined) next = frames[0];
    } else {
      var earlier = frames.filter(function (f) { return f < state.frame; });
      next = earlier.length ? earlier[earlier.length - 1] : frames[frames.length - 1];
    }
    setFrame(next);
  }
  function setImage(index) {
    state.image = index;
    state.frame = 0;
    buildScrubber();
    var image = current();
    setFrame(1); // a clip opens on its first frame; the marks show where the lesions are
    fit();
    document.querySelectorAll(".ws-image-tab").forEach(function (tab, i) {
      tab.classList.toggle("active", i === index);
    });
    var cam = $("ws-cam");
    cam.disabled = !image.cam_url;
    cam.parentNode.title = image.cam_url ? "" : "Grad-CAM needs the model in this service";
  }
  function setTool(tool) {
    state.tool = tool;
    state.drawing = null;
    document.querySelectorAll("[data-tool]").forEach(function (b) {
      b.classList.toggle("active", b.getAttribute("data-tool") === tool);
    });
    canvas.className = "ws-canvas tool-" + tool;
    draw();
  }

  function buildScrubber() {
    var image = current();
    var range = $("ws-frame");
    range.max = String(image.frames);
    range.disabled = image.frames < 2;
    var marks = $("ws-marks");
    marks.innerHTML = "";
    image.lesion_frames.forEach(function (f) {
      var left = image.frames > 1 ? (100 * (f - 1)) / (image.frames - 1) : 0;
      marks.appendChild(el("span", {
        class: "ws-mark", style: "left: " + left + "%", title: "Lesion on frame " + f,
        "data-frame": String(f),
        onclick: function () { setFrame(f); },
      }));
    });
    $("ws-scrubber").hidden = image.frames < 2;
    $("ws-prev-lesion").disabled = $("ws-next-lesion").disabled = !image.lesion_frames.length;
    drawStrip();
    $("ws-lesion-count").textContent = image.lesion_frames.length
      ? "AI lesion on " + image.lesion_frames.length + " of " + image.frames + " frame" +
        (image.frames === 1 ? "" : "s") + ": " + compactFrames(image.lesion_frames)
      : "No AI lesion on any of the " + image.frames + " frame" + (image.frames === 1 ? "" : "s");
  }

  function compactFrames(frames) {
    var parts = [], start = null, prev = null;
    frames.concat([null]).forEach(function (f) {
      if (start !== null && (f === null || f !== prev + 1)) {
        parts.push(start === prev ? String(start) : start + "\u2013" + prev);
        start = null;
      }
      if (f !== null && start === null) start = f;
      prev = f;
    });
    return parts.join(", ");
  }

  function probBars(probabilities, predicted) {
    var box = el("div", { class: "bars" });
    Object.keys(probabilities).sort(function (a, b) {
      return probabilities[b] - probabilities[a];
    }).forEach(function (name) {
      var p = probabilities[name];
      box.appendChild(el("div", { class: "bar-row" + (name === predicted ? " top" : "") }, [
        el("span", { class: "cls cls-" + name, text: name }),
        el("span", { class: "bar" }, [el("span", { style: "width: " + (100 * p).toFixed(1) + "%" })]),
        el("span", { class: "num", text: pct(p) }),
      ]));
    });
    return box;
  }

  function renderFrameInfo() {
    var image = current();
    var result = resultFor(image, state.frame);
    frameInfo.innerHTML = "";
    frameInfo.appendChild(el("h3", { text: "Image " + image.index + " \u00b7 frame " + state.frame }));
    var scores = frameScores(image, state.frame);
    if (scores) {
      frameInfo.appendChild(el("p", {}, [
        "Frame class: ", el("span", { class: "cls cls-" + scores.predicted,
          id: "ws-frame-class", text: scores.predicted }),
      ]));
      frameInfo.appendChild(probBars(scores.probabilities, scores.predicted));
    } else {
      frameInfo.appendChild(el("p", { class: "small muted", text:
        "This frame was analysed; its own class was not recorded by this job (older jobs " +
        "kept it for the first frames of a clip only). Its lesion outline comes from the AI SEG." }));
    }
    var n = result ? result.lesions.length : 0;
    frameInfo.appendChild(el("p", { id: "ws-frame-lesions", text: n
      ? "AI: " + n + " lesion" + (n === 1 ? "" : "s") + " on this frame"
      : "AI: no lesion on this frame" }));
    if (result && (result.long_axis_mm !== null && result.long_axis_mm !== undefined)) {
      frameInfo.appendChild(el("p", { class: "small", text: "Long axis " +
        result.long_axis_mm.toFixed(1) + " mm, short axis " +
        (result.short_axis_mm !== null ? result.short_axis_mm.toFixed(1) + " mm" : "\u2013") }));
    }
    if (result && result.descriptors) {
      var d = result.descriptors;
      var dl = el("dl", { class: "kv small" });
      [["Shape", d.shape], ["Orientation", d.orientation], ["Margin", d.margin],
       ["Echo pattern", d.echo_pattern], ["Posterior", d.posterior]].forEach(function (row) {
        if (row[1]) { dl.appendChild(el("dt", { text: row[0] })); dl.appendChild(el("dd", { text: row[1] })); }
      });
      frameInfo.appendChild(dl);
    }
    if (result && result.review) {
      var r = result.review;
      var words = { accepted: "accepted", corrected: "corrected", drawn: "drawn",
        rejected: "rejected (no lesion)" };
      frameInfo.appendChild(el("p", { class: "ws-review small", id: "ws-frame-review", text:
        "Radiologist review: " + (words[r.outcome] || r.action) +
        (r.reviewer ? " by " + r.reviewer : "") + (r.created ? ", " + localTime(r.created) : "") +
        (r.label ? "; class " + r.label : "") +
        (r.seg_sop_instance_uid ? "; corrected SEG " + r.seg_sop_instance_uid : "") +
        " (dashed green outline)" }));
    }
  }

  var CLASS_NAMES = ["normal", "benign", "malignant"]; // the order of frame_probabilities
  var CLASS_COLOURS = { normal: "21, 128, 61", benign: "180, 83, 9", malignant: "185, 28, 28" };

  /** A frame's class and probabilities: its result row, else the job's per-frame record. */
  function frameScores(image, frame) {
    var result = resultFor(image, frame);
    if (result && result.predicted_class && result.probabilities) {
      return { predicted: result.predicted_class, probabilities: result.probabilities };
    }
    var list = image.frame_probabilities;
    if (!list || !list[frame - 1]) return null;
    var probabilities = {}, best = null;
    CLASS_NAMES.forEach(function (name, i) {
      probabilities[name] = list[frame - 1][i];
      if (best === null || probabilities[name] > probabilities[best]) best = name;
    });
    return { predicted: best, probabilities: probabilities };
  }

  /** Under the scrubber: one column per frame, coloured by its class, as tall as its
   *  probability of malignancy; nothing when the job recorded no per-frame classes. */
  function drawStrip() {
    var image = current(), strip = $("ws-strip");
    var list = image.frame_probabilities;
    strip.hidden = !list || image.frames < 2;
    if (strip.hidden) return;
    var dpr = window.devicePixelRatio || 1;
    var w = strip.clientWidth, h = strip.clientHeight;
    strip.width = Math.round(w * dpr); strip.height = Math.round(h * dpr);
    var sctx = strip.getContext("2d");
    sctx.setTransform(dpr, 0, 0, dpr, 0, 0);
    sctx.clearRect(0, 0, w, h);
    // Column f sits under the slider's position of frame f (as the lesion marks do).
    var width = Math.max(1, w / image.frames - (w / image.frames > 3 ? 1 : 0));
    for (var f = 1; f <= image.frames; f++) {
      var s = frameScores(image, f);
      if (!s) continue;
      var centre = ((f - 1) / (image.frames - 1)) * w;
      var bar = Math.max(2, s.probabilities.malignant * h);
      sctx.fillStyle = "rgba(" + CLASS_COLOURS[s.predicted] + ", 0.85)";
      sctx.fillRect(clamp(centre - width / 2, 0, w - width), h - bar, width, bar);
    }
  }

  function refreshEditButtons() {
    if (!ws || !ws.can_edit) return;
    var e = editState();
    $("ws-undo").disabled = e.at === 0;
    $("ws-redo").disabled = e.at >= e.history.length - 1;
    $("ws-del-vertex").disabled = !(state.selected && state.selected.vertex !== null);
    $("ws-del-lesion").disabled = !state.selected;
    var edited = editedFrames();
    $("ws-edited").textContent = edited.length
      ? "Edited: frame" + (edited.length === 1 ? " " : "s ") + edited.join(", ")
      : "No edit yet";
  }

  // ---- building the page -------------------------------------------------------------------

  function button(id, text, onclick, attrs) {
    var a = attrs || {};
    a.type = "button"; a.id = id; a.text = text; a.onclick = onclick;
    return el("button", a);
  }

  function buildSide() {
    var side = $("ws-side");
    side.innerHTML = "";
    var s = ws.study;
    var study = el("dl", { class: "kv", id: "ws-study" });
    [["Patient ID", s.patient_id, "ws-patient-id"], ["Study date", s.study_date],
     ["Body part", s.body_part],
     ["Scanner", [s.manufacturer, s.model_name].filter(Boolean).join(" ") || null, "ws-scanner"],
     ["Laterality", s.laterality ? ({ L: "Left", R: "Right", B: "Both" }[s.laterality] || s.laterality) : null,
      "ws-laterality"]].forEach(function (row) {
      study.appendChild(el("dt", { text: row[0] }));
      study.appendChild(el("dd", { id: row[2] || null, text: row[1] || "\u2013" }));
    });
    side.appendChild(el("section", { class: "ws-block" }, [el("h3", { text: "Study" }), study]));

    var result = el("section", { class: "ws-block", id: "ws-result" }, [el("h3", { text: "Study result" })]);
    if (ws.predicted_class) {
      result.appendChild(el("p", { class: "big" }, ["Study class: ",
        el("span", { class: "cls cls-" + ws.predicted_class, id: "ws-study-class", text: ws.predicted_class })]));
      if (ws.probabilities) result.appendChild(probBars(ws.probabilities, ws.predicted_class));
    } else {
      result.appendChild(el("p", { class: "muted", text: "No result yet." }));
    }
    result.appendChild(el("p", { class: "small ws-rule", id: "ws-class-rule", text: ws.class_rule }));
    side.appendChild(result);

    frameInfo = el("section", { class: "ws-block", id: "ws-frame-info" });
    side.appendChild(frameInfo);

    var times = el("dl", { class: "kv small", id: "ws-times" });
    Object.keys(ws.times).forEach(function (name) {
      times.appendChild(el("dt", { text: name.charAt(0).toUpperCase() + name.slice(1) }));
      times.appendChild(el("dd", { text: ws.times[name] }));
    });
    side.appendChild(el("section", { class: "ws-block" }, [
      el("h3", { text: "Times (" + ws.time_zone + ")" }), times]));

    var related = el("ul", { class: "ws-related", id: "ws-related" });
    ws.related_jobs.forEach(function (job) {
      related.appendChild(el("li", {}, [el("a", { href: job.url, text: "Job #" + job.id }),
        " " + job.state + " \u00b7 " + job.created]));
    });
    if (!ws.related_jobs.length) related.appendChild(el("li", { class: "muted", text: "None" }));
    side.appendChild(el("section", { class: "ws-block" }, [
      el("h3", { text: "Other jobs of this study" }), related]));
  }

  function buildEditor() {
    var bar = $("ws-editor");
    if (!ws.can_edit) {
      bar.hidden = true;
      return;
    }
    bar.hidden = false;
    bar.innerHTML = "";
    var tools = el("div", { class: "ws-group", role: "group", "aria-label": "Tools" }, [
      button("ws-tool-select", "Move / select", function () { setTool("select"); },
        { "data-tool": "select", title: "Drag a vertex; double-click an edge to add one" }),
      button("ws-tool-brush", "Brush", function () { setTool("brush"); }, { "data-tool": "brush" }),
      button("ws-tool-eraser", "Eraser", function () { setTool("eraser"); }, { "data-tool": "eraser" }),
      button("ws-tool-new", "New lesion", function () { setTool("new"); },
        { "data-tool": "new", title: "Click around the lesion, double-click (or Enter) to close" }),
      button("ws-tool-pan", "Pan", function () { setTool("pan"); }, { "data-tool": "pan" }),
      el("label", { class: "ws-inline" }, ["Brush ",
        el("input", { type: "range", id: "ws-brush", min: "1", max: "40", value: String(state.brush),
          oninput: function (e) { state.brush = Number(e.target.value); draw(); } })]),
    ]);
    var edits = el("div", { class: "ws-group" }, [
      button("ws-undo", "Undo", undo, { title: "Ctrl+Z" }),
      button("ws-redo", "Redo", redo, { title: "Ctrl+Y" }),
      button("ws-del-vertex", "Delete vertex", deleteVertex, { title: "Delete key" }),
      button("ws-del-lesion", "Delete lesion", deleteLesion),
      button("ws-reset", "Reset to AI", resetToAi),
      el("span", { class: "small muted", id: "ws-edited" }),
    ]);
    var label = el("select", { id: "ws-label", title: "Your class for this image" }, [
      el("option", { value: "", text: "Class: keep the AI's" }),
      el("option", { value: "benign", text: "Class: benign" }),
      el("option", { value: "malignant", text: "Class: malignant" }),
    ]);
    var answers = el("div", { class: "ws-group ws-answers" }, [
      label,
      button("ws-accept", "Accept", function () { ask("accept"); }, { class: "primary" }),
      button("ws-send", "Edit and send", function () { ask("edit"); }, { class: "primary" }),
      button("ws-reject", "Reject (no lesion)", function () { ask("reject"); }, { class: "danger" }),
    ]);
    bar.appendChild(tools);
    bar.appendChild(edits);
    bar.appendChild(answers);
    bar.appendChild(el("div", { id: "ws-confirm", class: "ws-confirm", hidden: true }));
    setTool("select");
  }

  function buildViewer() {
    var view = $("ws-view");
    var tabs = $("ws-images");
    tabs.innerHTML = "";
    if (ws.images.length > 1) {
      ws.images.forEach(function (image, i) {
        tabs.appendChild(button("ws-image-" + image.index, "Image " + image.index +
          (image.frames > 1 ? " (" + image.frames + " frames)" : "") +
          (image.lesion_frames.length ? " \u25cf" : ""), function () { setImage(i); },
          { class: "ws-image-tab" }));
      });
    }
    canvas = $("ws-canvas");
    ctx = canvas.getContext("2d");
    canvas.addEventListener("pointerdown", onPointerDown);
    canvas.addEventListener("pointermove", onPointerMove);
    canvas.addEventListener("pointerup", onPointerUp);
    canvas.addEventListener("pointercancel", onPointerUp);
    canvas.addEventListener("pointerleave", function () { state.pointer = null; draw(); });
    canvas.addEventListener("dblclick", onDoubleClick);
    canvas.addEventListener("wheel", onWheel, { passive: false });
    $("ws-zoom-in").addEventListener("click", function () {
      zoomAt(1.25, canvas.clientWidth / 2, canvas.clientHeight / 2);
    });
    $("ws-zoom-out").addEventListener("click", function () {
      zoomAt(0.8, canvas.clientWidth / 2, canvas.clientHeight / 2);
    });
    $("ws-fit").addEventListener("click", fit);
    $("ws-actual").addEventListener("click", actualSize);
    $("ws-overlay").addEventListener("change", function (e) { state.overlay = e.target.value; draw(); });
    $("ws-opacity").addEventListener("input", function (e) {
      state.opacity = Number(e.target.value) / 100; draw();
    });
    $("ws-cam").addEventListener("change", function (e) { state.cam = e.target.checked; draw(); });
    $("ws-frame").addEventListener("input", function (e) { setFrame(Number(e.target.value)); });
    $("ws-prev").addEventListener("click", function () { setFrame(state.frame - 1); });
    $("ws-next").addEventListener("click", function () { setFrame(state.frame + 1); });
    $("ws-prev-lesion").addEventListener("click", function () { jumpLesion(-1); });
    $("ws-next-lesion").addEventListener("click", function () { jumpLesion(1); });
    $("ws-strip").addEventListener("click", function (event) { // a column: its frame
      var rect = event.target.getBoundingClientRect(), frames = current().frames;
      setFrame(1 + Math.round(((event.clientX - rect.left) / rect.width) * (frames - 1)));
    });
    window.addEventListener("resize", function () { draw(); drawStrip(); });
    document.addEventListener("keydown", onKey);
    view.hidden = false;
  }

  function onKey(event) {
    var target = event.target;
    if (target && (target.tagName === "INPUT" && target.type !== "range" ||
        target.tagName === "SELECT" || target.tagName === "TEXTAREA")) return;
    var ctrl = event.ctrlKey || event.metaKey;
    if (ws.can_edit && ctrl && (event.key === "z" || event.key === "Z") && !event.shiftKey) {
      event.preventDefault(); undo();
    } else if (ws.can_edit && ctrl && (event.key === "y" || event.key === "Y" ||
               ((event.key === "z" || event.key === "Z") && event.shiftKey))) {
      event.preventDefault(); redo();
    } else if (ws.can_edit && (event.key === "Delete" || event.key === "Backspace")) {
      if (state.selected && state.selected.vertex !== null) deleteVertex();
      else if (state.selected) deleteLesion();
      event.preventDefault();
    } else if (ws.can_edit && event.key === "Enter" && state.tool === "new") {
      finishNewLesion();
    } else if (ws.can_edit && event.key === "Escape") {
      state.drawing = null; state.selected = null; draw();
    } else if (event.key === "ArrowRight" && target.type !== "range") {
      setFrame(state.frame + 1);
    } else if (event.key === "ArrowLeft" && target.type !== "range") {
      setFrame(state.frame - 1);
    }
  }

  function start(data) {
    ws = data;
    statusLine = $("ws-status");
    if (ws.caution) {
      $("ws-caution").hidden = false;
      $("ws-caution").textContent = "Caution: " + ws.caution + ".";
    }
    if (ws.trial) $("ws-trial").hidden = false;
    buildSide();
    if (!ws.images.length) {
      $("ws-empty").hidden = false;
      return;
    }
    buildViewer();
    buildEditor();
    setImage(0);
    root.setAttribute("data-ready", "true");
  }

  // For tests and for a page that builds the JSON itself (a trial upload).
  window.wecareWorkspace = {
    start: start,
    state: state,
    lesions: function () { return clone(lesions()); },
    toScreen: toScreen,
    toImage: toImage,
    setFrame: function (f) { setFrame(f); },
    payload: payload,
    trace: tracePolygons,
    rasterize: rasterize,
  };

  var src = root.getAttribute("data-src");
  if (src) {
    fetch(src, { headers: { Accept: "application/json" }, credentials: "same-origin" })
      .then(function (response) {
        if (!response.ok) throw new Error("workspace not available (" + response.status + ")");
        return response.json();
      })
      .then(start)
      .catch(function (err) {
        var box = $("ws-status");
        box.textContent = String(err.message || err);
        box.className = "ws-status error";
      });
  }
})();

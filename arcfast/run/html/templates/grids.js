/* Shared by report.html and compare.html: elements, grids, numbers and the two plots.
   Every string that comes from the run (task ids, errors) enters the page as text, never as markup. */
"use strict";
var ARC = (function () {
  var SVG = "http://www.w3.org/2000/svg";

  function el(tag, attrs) {
    var e = document.createElement(tag);
    if (attrs) {
      Object.keys(attrs).forEach(function (k) {
        var v = attrs[k];
        if (v === null || v === undefined) return;
        if (k === "text") e.textContent = String(v);
        else if (k === "class") e.className = v;
        else e.setAttribute(k, String(v));
      });
    }
    for (var i = 2; i < arguments.length; i++) {
      var kid = arguments[i];
      if (kid === null || kid === undefined || kid === false) continue;
      e.appendChild(typeof kid === "string" ? document.createTextNode(kid) : kid);
    }
    return e;
  }

  function svg(tag, attrs) {
    var e = document.createElementNS(SVG, tag);
    Object.keys(attrs || {}).forEach(function (k) {
      if (k === "text") e.textContent = String(attrs[k]); else e.setAttribute(k, String(attrs[k]));
    });
    return e;
  }

  /* "HxW:digits" -> {h, w, cells} */
  function parse(code) {
    var colon = code.indexOf(":");
    var hw = code.slice(0, colon).split("x");
    return { h: +hw[0], w: +hw[1], cells: code.slice(colon + 1) };
  }

  /* One grid: a CSS grid of h*w cells in the ARC palette. opts: label, px (the longest side's
     size), against (a right output's code: cells that differ are marked), mark ("right"/"wrong"). */
  function grid(code, opts) {
    opts = opts || {};
    var g = parse(code);
    var size = Math.max(3, Math.min(16, Math.floor((opts.px || 160) / Math.max(g.h, g.w))));
    var box = el("div", { class: "grid", "data-h": g.h, "data-w": g.w });
    box.style.gridTemplateColumns = "repeat(" + g.w + ", " + size + "px)";
    box.style.gridAutoRows = size + "px";
    var ref = opts.against ? parse(opts.against) : null;
    var sameShape = ref && ref.h === g.h && ref.w === g.w;
    var bad = 0;
    var frag = document.createDocumentFragment();
    for (var i = 0; i < g.cells.length; i++) {
      var c = document.createElement("div");
      c.className = "cell c" + g.cells.charAt(i);
      if (sameShape && ref.cells.charAt(i) !== g.cells.charAt(i)) { c.className += " bad"; bad++; }
      frag.appendChild(c);
    }
    box.appendChild(frag);
    var caption = (opts.label ? opts.label + " · " : "") + g.h + "×" + g.w;
    if (sameShape && opts.against) caption += " · " + bad + " cells differ";
    else if (ref) caption += " · right output is " + ref.h + "×" + ref.w;
    return el("figure", { class: "g" + (opts.mark ? " " + opts.mark : "") }, box, el("figcaption", { text: caption }));
  }

  function num(x, digits) {
    if (x === null || x === undefined) return "–";
    return (+x).toFixed(digits === undefined ? 2 : digits);
  }
  function pct(x) { return x === null || x === undefined ? "–" : (100 * x).toFixed(1) + "%"; }
  function secs(x) {
    if (x === null || x === undefined) return "–";
    if (x < 120) return x.toFixed(1) + " s";
    if (x < 7200) return (x / 60).toFixed(1) + " min";
    return (x / 3600).toFixed(2) + " h";
  }

  var PHASES = ["train", "predict", "rescore", "verify", "write"];

  /* The run's time line: a row per group, its phases, the deadline and the budget. */
  function timeline(host, tl) {
    var groups = tl.groups || [];
    if (!groups.length) { host.appendChild(el("p", { class: "muted", text: "No group was logged." })); return; }
    var end = 0;
    groups.forEach(function (g) { (g.phases || []).forEach(function (p) { end = Math.max(end, p[2]); });
                                  if (g.end) end = Math.max(end, g.end); });
    end = Math.max(end, tl.budget || 0, tl.seconds || 0) * 1.02 || 1;
    var rowH = groups.length > 60 ? 4 : groups.length > 20 ? 9 : 16;
    var left = 90, width = 1000, plotW = width - left - 10, top = 8, height = top + rowH * groups.length + 34;
    var root = svg("svg", { viewBox: "0 0 " + width + " " + height, width: "100%", role: "img", class: "timeline" });
    var x = function (t) { return left + plotW * t / end; };
    groups.forEach(function (g, i) {
      var y = top + i * rowH;
      if (rowH >= 9) root.appendChild(svg("text", { x: left - 6, y: y + rowH - 3, "text-anchor": "end", text: g.label }));
      (g.phases || []).forEach(function (p) {
        var r = svg("rect", { x: x(p[1]), y: y + 1, width: Math.max(0.5, x(p[2]) - x(p[1])), height: rowH - 2,
                              class: "ph-" + p[0] });
        r.appendChild(svg("title", { text: g.label + ": " + p[0] + " " + secs(p[2] - p[1]) + " (" +
                                           g.tasks.length + " tasks: " + g.tasks.slice(0, 8).join(", ") +
                                           (g.tasks.length > 8 ? ", …" : "") + ")" }));
        root.appendChild(r);
      });
      if (g.failed) root.appendChild(svg("text", { x: x(g.end || 0) + 4, y: y + rowH - 2, fill: "#c5221f", text: "failed" }));
    });
    var axisY = top + rowH * groups.length + 4;
    root.appendChild(svg("line", { x1: left, x2: left + plotW, y1: axisY, y2: axisY, class: "axis" }));
    for (var k = 0; k <= 5; k++) {
      var t = end * k / 5;
      root.appendChild(svg("text", { x: x(t), y: axisY + 14, "text-anchor": k === 0 ? "start" : k === 5 ? "end" : "middle",
                                     text: secs(t) }));
    }
    [["deadline", tl.deadline], ["budget", tl.budget]].forEach(function (m) {
      if (m[1] === null || m[1] === undefined) return;
      root.appendChild(svg("line", { x1: x(m[1]), x2: x(m[1]), y1: 0, y2: axisY, class: m[0] }));
      root.appendChild(svg("text", { x: x(m[1]) - 3, y: axisY + 28, "text-anchor": "end", text: m[0] + " " + secs(m[1]) }));
    });
    host.appendChild(root);
    var legend = el("div", { class: "legend" });
    PHASES.forEach(function (p) { legend.appendChild(el("span", null, el("i", { class: "ph-" + p + "-box" }), p)); });
    legend.querySelectorAll("i").forEach(function (i, n) {
      i.style.background = ["#4c72b0", "#dd8452", "#8172b3", "#55a868", "#937860"][n];
    });
    host.appendChild(legend);
  }

  /* A loss curve, [[step, loss]]. */
  function lossCurve(points, caption) {
    var w = 320, h = 140, l = 44, b = 22, t = 8, r = 8;
    var root = svg("svg", { viewBox: "0 0 " + w + " " + h, width: w, height: h, class: "loss" });
    var xs = points.map(function (p) { return +p[0]; }), ys = points.map(function (p) { return +p[1]; });
    var x0 = Math.min.apply(null, xs), x1 = Math.max.apply(null, xs);
    var y0 = Math.min.apply(null, ys), y1 = Math.max.apply(null, ys);
    if (x1 === x0) x1 = x0 + 1;
    if (y1 === y0) { y1 += 0.5; y0 -= 0.5; }
    var X = function (v) { return l + (w - l - r) * (v - x0) / (x1 - x0); };
    var Y = function (v) { return t + (h - t - b) * (1 - (v - y0) / (y1 - y0)); };
    root.appendChild(svg("line", { x1: l, x2: w - r, y1: h - b, y2: h - b, class: "axis" }));
    root.appendChild(svg("line", { x1: l, x2: l, y1: t, y2: h - b, class: "axis" }));
    root.appendChild(svg("text", { x: l - 4, y: t + 8, "text-anchor": "end", text: y1.toFixed(2) }));
    root.appendChild(svg("text", { x: l - 4, y: h - b, "text-anchor": "end", text: y0.toFixed(2) }));
    root.appendChild(svg("text", { x: l, y: h - 6, text: "step " + x0 }));
    root.appendChild(svg("text", { x: w - r, y: h - 6, "text-anchor": "end", text: "step " + x1 }));
    root.appendChild(svg("polyline", { class: "curve", points: points.map(function (p) {
      return X(+p[0]).toFixed(1) + "," + Y(+p[1]).toFixed(1); }).join(" ") }));
    return el("figure", { class: "g" }, root, el("figcaption", { text: caption }));
  }

  /* Each task's seconds in one run (x) against another (y), the diagonal drawn: above it, slower.
     points: [[x, y, label, highlighted]]. */
  function scatter(points, xLabel, yLabel) {
    var w = 360, h = 300, l = 52, b = 40, t = 10, r = 10;
    var root = svg("svg", { viewBox: "0 0 " + w + " " + h, width: w, height: h, class: "scatter" });
    var top = 0;
    points.forEach(function (p) { top = Math.max(top, p[0], p[1]); });
    top = top * 1.05 || 1;
    var X = function (v) { return l + (w - l - r) * v / top; };
    var Y = function (v) { return t + (h - t - b) * (1 - v / top); };
    root.appendChild(svg("line", { x1: l, x2: w - r, y1: h - b, y2: h - b, class: "axis" }));
    root.appendChild(svg("line", { x1: l, x2: l, y1: t, y2: h - b, class: "axis" }));
    root.appendChild(svg("line", { x1: X(0), y1: Y(0), x2: X(top), y2: Y(top), class: "axis", "stroke-dasharray": "4 3" }));
    root.appendChild(svg("text", { x: w - r, y: h - 8, "text-anchor": "end", text: xLabel + " (s)" }));
    root.appendChild(svg("text", { x: 4, y: t + 10, text: yLabel + " (s)" }));
    root.appendChild(svg("text", { x: l - 4, y: h - b + 14, "text-anchor": "end", text: "0" }));
    root.appendChild(svg("text", { x: w - r, y: h - b + 14, "text-anchor": "end", text: secs(top) }));
    points.forEach(function (p) {
      var c = svg("circle", { cx: X(p[0]), cy: Y(p[1]), r: 3, fill: p[3] ? "#c5221f" : "#4c72b0", "fill-opacity": 0.7 });
      c.appendChild(svg("title", { text: p[2] + ": " + secs(p[0]) + " / " + secs(p[1]) }));
      root.appendChild(c);
    });
    return root;
  }

  function json(id) { return JSON.parse(document.getElementById(id).textContent); }

  /* The task table of a page (#task-table, #filters, #find, #shown): rows[i] is the data of the row
     whose data-i is i. Filter buttons (data-filter) and the id box keep the rows where
     keep(row, filter) holds; a header with data-key sorts by that key of the rows (open tasks
     closed first); a row clicked, or Enter or Space on it, opens a detail row below it that
     draw(cell, i) fills, or closes it. Returns {rows: the <tr> elements, toggle: (tr) -> void}. */
  function taskTable(rows, filter, keep, draw) {
    var tbody = document.querySelector("#task-table tbody");
    var trs = Array.prototype.slice.call(tbody.querySelectorAll("tr.task"));
    var needle = "";

    function apply() {
      var shown = 0;
      trs.forEach(function (tr) {
        var r = rows[+tr.dataset.i];
        var ok = keep(r, filter) && (!needle || r.id.toLowerCase().indexOf(needle) >= 0);
        tr.hidden = !ok;
        var next = tr.nextElementSibling;
        if (next && next.classList.contains("detail-row")) next.hidden = !ok;
        if (ok) shown++;
      });
      document.getElementById("shown").textContent = shown + " of " + rows.length + " tasks shown";
    }
    function sort(key, desc) {
      tbody.querySelectorAll("tr.detail-row").forEach(function (r) { r.remove(); });
      trs.forEach(function (tr) { tr.classList.remove("open"); });
      trs.slice().sort(function (a, b) {
        var x = rows[+a.dataset.i][key], y = rows[+b.dataset.i][key];
        if (x === y) return +a.dataset.i - +b.dataset.i;
        if (x === null || x === undefined || x === "") return 1;
        if (y === null || y === undefined || y === "") return -1;
        var c = typeof x === "number" && typeof y === "number" ? x - y : String(x).localeCompare(String(y));
        return desc ? -c : c;
      }).forEach(function (tr) { tbody.appendChild(tr); });
    }
    function toggle(tr) {
      var next = tr.nextElementSibling;
      if (next && next.classList.contains("detail-row")) {
        next.remove();
        tr.classList.remove("open");
        return;
      }
      var cell = el("td", { class: "detail-cell", colspan: tr.children.length });
      tr.after(el("tr", { class: "detail-row", "data-i": tr.dataset.i }, cell));
      tr.classList.add("open");
      draw(cell, +tr.dataset.i);
    }

    document.querySelectorAll("#filters button").forEach(function (b) {
      b.addEventListener("click", function () {
        document.querySelectorAll("#filters button").forEach(function (o) { o.classList.remove("on"); });
        b.classList.add("on");
        filter = b.dataset.filter;
        apply();
      });
    });
    document.getElementById("find").addEventListener("input", function (e) {
      needle = e.target.value.toLowerCase();
      apply();
    });
    document.querySelectorAll("#task-table th[data-key]").forEach(function (th) {
      th.addEventListener("click", function () {
        var desc = th.classList.contains("asc");
        document.querySelectorAll("#task-table th").forEach(function (o) { o.classList.remove("asc", "desc"); });
        th.classList.add(desc ? "desc" : "asc");
        sort(th.dataset.key, desc);
      });
    });
    trs.forEach(function (tr) {
      tr.addEventListener("click", function () { toggle(tr); });
      tr.addEventListener("keydown", function (e) {
        if (e.key === "Enter" || e.key === " ") { e.preventDefault(); toggle(tr); }
      });
    });
    apply();
    return { rows: trs, toggle: toggle };
  }

  return { el: el, grid: grid, num: num, pct: pct, secs: secs, timeline: timeline, lossCurve: lossCurve,
           scatter: scatter, json: json, taskTable: taskTable };
})();

// The transfer zoo's graph viewer: written for this project (its LICENSE), no dependencies.
// Reads the graph from <script id="zoo-graph">, draws the visible nodes as SVG in layers
// (longest path from the input), clusters as boxes that collapse into one node and expand
// in place, pans (drag) and zooms (wheel), searches paths, and shows a node's details.
(function () {
  "use strict";
  var G = JSON.parse(document.getElementById("zoo-graph").textContent);
  var NS = "http://www.w3.org/2000/svg";
  var svg = document.getElementById("canvas"), view = document.getElementById("view");
  var panel = document.getElementById("panel"), results = document.getElementById("results");
  var search = document.getElementById("search");
  var modules = {}, nodes = {}, expanded = {}, selected = null, hit = null;
  var zoom = {x: 20, y: 20, k: 1}, layout = null;
  G.modules.forEach(function (m) { modules[m.path] = m; });
  G.nodes.forEach(function (n) { nodes[n.id] = n; });
  G.modules.forEach(function (m) {
    expanded[m.path] = G.depth === null || m.path.split("/").length < G.depth;
  });
  var COLORS = {trainable: "#c8e6c9", frozen: "#cfd8dc", mixed: "#ffe0b2"};

  function prefixes(scope) {
    if (!scope) return [];
    var parts = scope.split("/"), out = [];
    for (var k = 1; k <= parts.length; k++) out.push(parts.slice(0, k).join("/"));
    return out;
  }
  // The visible item a node is drawn as: itself, or its outermost collapsed module.
  function rep(id) {
    var n = nodes[id], pre = prefixes(n.scope);
    for (var i = 0; i < pre.length; i++) if (!expanded[pre[i]]) return "m:" + pre[i];
    return id;
  }
  function human(v) {
    var u = [[1e9, "G"], [1e6, "M"], [1e3, "k"]];
    for (var i = 0; i < u.length; i++) if (v >= u[i][0]) return (v / u[i][0]).toPrecision(3) + u[i][1];
    return String(v);
  }
  function shape(s) { return (s.length > 1 ? s.slice(1) : s).join("×") || "scalar"; }
  function item(id) {  // {id, label, kind, ...} of a visible item
    if (id.slice(0, 2) === "m:") {
      var m = modules[id.slice(2)], name = m.path.split("/").pop();
      if (m.repeat > 1) name += " … " + m.last + " ×" + m.repeat;
      return {id: id, path: m.path, kind: "cluster", type: m.type, shapes: m.shapes,
              label: name + " : " + m.type, status: m.status, info: m};
    }
    var n = nodes[id], nm = id.split("/").pop(), label;
    if (n.kind === "op") label = n.type;
    else if (n.kind === "module") label = (n.repeat > 1 ? nm + " … " + n.last + " ×" + n.repeat : nm) + " : " + n.type;
    else if (n.kind === "error") label = "failed in " + (G.error ? G.error.path || G.name : "?") + " : " + n.type;
    else label = nm;
    return {id: id, path: id, kind: n.kind, type: n.type, shapes: n.shapes, label: label,
            status: n.status, info: n};
  }

  function compute() {
    var order = [], index = {}, edges = [], seen = {};
    G.nodes.forEach(function (n) {
      var r = rep(n.id);
      if (!(r in index)) { index[r] = order.length; order.push(r); }
    });
    G.edges.forEach(function (e) {
      var s = rep(e[0]), d = rep(e[1]), key = s + "\u0000" + d;
      if (s !== d && !seen[key]) { seen[key] = 1; edges.push({src: s, dst: d, shape: e[2]}); }
    });
    var layer = {}, preds = {};
    order.forEach(function (r) { layer[r] = 0; preds[r] = []; });
    edges.forEach(function (e) { preds[e.dst].push(e.src); });
    order.forEach(function (r) {
      preds[r].forEach(function (p) {
        if (index[p] < index[r]) layer[r] = Math.max(layer[r], layer[p] + 1);
      });
    });
    var rows = [], items = {};
    order.forEach(function (r) {
      var it = item(r);
      it.w = Math.max(70, 7 * Math.max(it.label.length, shape(it.shapes[0] || []).length) + 16);
      it.h = it.kind === "op" ? 30 : 38;
      items[r] = it;
      (rows[layer[r]] = rows[layer[r]] || []).push(r);
    });
    var y = 0, xs = {};
    rows.forEach(function (row) {
      row.forEach(function (r) {  // barycentre of the predecessors, else keep order
        var ps = preds[r].filter(function (p) { return p in xs; });
        items[r].bx = ps.length ? ps.reduce(function (a, p) { return a + xs[p]; }, 0) / ps.length : -1;
      });
      row.sort(function (a, b) { return (items[a].bx - items[b].bx) || (index[a] - index[b]); });
      var x = 0;
      row.forEach(function (r) {
        var it = items[r], want = it.bx >= 0 ? it.bx - it.w / 2 : x;
        it.x = Math.max(x, want); it.y = y; x = it.x + it.w + 24; xs[r] = it.x + it.w / 2;
      });
      y += 80;
    });
    // boxes of the expanded modules that have a visible member, innermost last
    var boxes = [];
    G.modules.forEach(function (m) {
      if (!expanded[m.path] || prefixes(m.path).some(function (p) { return !expanded[p]; })) return;
      var b = null;
      order.forEach(function (r) {
        var p = r.slice(0, 2) === "m:" ? r.slice(2) : r;
        if (p.indexOf(m.path + "/") !== 0) return;
        var it = items[r];
        if (!b) b = {x0: it.x, y0: it.y, x1: it.x + it.w, y1: it.y + it.h};
        b.x0 = Math.min(b.x0, it.x); b.y0 = Math.min(b.y0, it.y);
        b.x1 = Math.max(b.x1, it.x + it.w); b.y1 = Math.max(b.y1, it.y + it.h);
      });
      if (b) { b.m = m; b.depth = m.path.split("/").length; boxes.push(b); }
    });
    boxes.sort(function (a, b) { return a.depth - b.depth; });
    return {order: order, items: items, edges: edges, boxes: boxes};
  }

  function el(name, attrs, parent) {
    var e = document.createElementNS(NS, name);
    for (var k in attrs) e.setAttribute(k, attrs[k]);
    if (parent) parent.appendChild(e);
    return e;
  }
  function text(parent, x, y, s, attrs) {
    var t = el("text", Object.assign({x: x, y: y}, attrs || {}), parent);
    t.textContent = s;
    return t;
  }

  function render() {
    layout = compute();
    while (view.firstChild) view.removeChild(view.firstChild);
    layout.boxes.forEach(function (b) {
      var pad = 10 + 4 * (8 - Math.min(b.depth, 8));
      var g = el("g", {"class": "cluster", "data-path": b.m.path}, view);
      el("rect", {x: b.x0 - pad, y: b.y0 - pad - 14, width: b.x1 - b.x0 + 2 * pad,
                  height: b.y1 - b.y0 + 2 * pad + 14, rx: 8, fill: "none", stroke: "#9e9e9e"}, g);
      var name = b.m.path.split("/").pop();
      text(g, b.x0 - pad + 22, b.y0 - pad - 1, name + " : " + b.m.type, {fill: "#555"});
      var t = el("g", {"class": "toggle", "data-path": b.m.path, "data-action": "collapse"}, g);
      el("rect", {x: b.x0 - pad + 4, y: b.y0 - pad - 11, width: 13, height: 13, rx: 2}, t);
      text(t, b.x0 - pad + 7, b.y0 - pad, "−");
      t.addEventListener("click", function (ev) { ev.stopPropagation(); collapse(b.m.path); });
    });
    layout.edges.forEach(function (e) {
      var a = layout.items[e.src], b = layout.items[e.dst];
      var x0 = a.x + a.w / 2, y0 = a.y + a.h, x1 = b.x + b.w / 2, y1 = b.y;
      el("path", {"class": "edge", d: "M" + x0 + "," + y0 + " C" + x0 + "," + (y0 + 30) + " " +
                  x1 + "," + (y1 - 30) + " " + x1 + "," + y1, fill: "none", stroke: "#777",
                  "data-src": e.src, "data-dst": e.dst}, view);
    });
    layout.order.forEach(function (r) {
      var it = layout.items[r];
      var g = el("g", {"class": "node", "data-id": r, "data-kind": it.kind}, view);
      var fill = it.kind === "error" ? "#ffcdd2" : it.kind === "op" ? "#eeeeee" :
        (it.kind === "input" || it.kind === "output") ? "#e3f2fd" : (COLORS[it.status] || "#fff");
      if (it.kind === "op") {
        el("ellipse", {cx: it.x + it.w / 2, cy: it.y + it.h / 2, rx: it.w / 2, ry: it.h / 2,
                       fill: fill, stroke: "#777"}, g);
      } else {
        el("rect", {x: it.x, y: it.y, width: it.w, height: it.h, rx: 6, fill: fill,
                    stroke: it.kind === "error" ? "#c62828" : "#555",
                    "stroke-width": it.kind === "cluster" ? 2 : 1}, g);
      }
      text(g, it.x + it.w / 2, it.y + 15, it.label, {"text-anchor": "middle"});
      text(g, it.x + it.w / 2, it.y + 28, it.shapes.map(shape).join(", "),
           {"text-anchor": "middle", fill: "#666"});
      if (it.kind === "cluster") {
        var t = el("g", {"class": "toggle", "data-path": it.path, "data-action": "expand"}, g);
        el("rect", {x: it.x + 3, y: it.y + 3, width: 13, height: 13, rx: 2}, t);
        text(t, it.x + 6, it.y + 14, "+");
        t.addEventListener("click", function (ev) { ev.stopPropagation(); expand(it.path); });
      }
      if (r === selected) g.classList.add("selected");
      if (r === hit) g.classList.add("hit");
      g.addEventListener("click", function (ev) { ev.stopPropagation(); select(r); });
      g.addEventListener("dblclick", function (ev) {
        ev.stopPropagation(); if (it.kind === "cluster") expand(it.path);
      });
    });
    apply();
  }

  function apply() {
    view.setAttribute("transform", "translate(" + zoom.x + "," + zoom.y + ") scale(" + zoom.k + ")");
  }
  function fit() {
    var box = view.getBBox(), w = svg.clientWidth || 800, h = svg.clientHeight || 600;
    if (!box.width) return;
    zoom.k = Math.min(2, Math.min(w / (box.width + 40), h / (box.height + 40)));
    zoom.x = (w - box.width * zoom.k) / 2 - box.x * zoom.k;
    zoom.y = 20 - box.y * zoom.k;
    apply();
  }
  function center(r) {
    var it = layout && layout.items[r];
    if (!it) return;
    var w = svg.clientWidth || 800, h = svg.clientHeight || 600;
    zoom.k = Math.max(zoom.k, 0.8);
    zoom.x = w / 2 - (it.x + it.w / 2) * zoom.k;
    zoom.y = h / 2 - (it.y + it.h / 2) * zoom.k;
    apply();
  }

  function expand(path) {
    prefixes(path).forEach(function (p) { if (p in expanded) expanded[p] = true; });
    render();
  }
  function collapse(path) {
    if (path in expanded) expanded[path] = false;
    if (selected && selected.slice(0, 2) !== "m:" && rep(selected) !== selected) selected = null;
    render();
  }
  function setAll(v) { for (var p in expanded) expanded[p] = v; render(); fit(); }

  function inputs(r) {
    return (layout ? layout.edges : []).filter(function (e) { return e.dst === r; })
      .map(function (e) { return e.src.replace(/^m:/, "") + " " + shape(e.shape); });
  }
  function known(r) { return r.slice(0, 2) === "m:" ? r.slice(2) in modules : r in nodes; }
  function select(r) {
    if (!known(r)) return false;
    selected = r;
    var it = layout.items[r] || item(r), d = it.info;
    var kind = it.kind === "cluster" ? "module (collapsed: + or double-click expands)" : it.kind;
    var rows = [["path", it.path || "(root)"], ["kind", kind], ["type", it.type],
                ["inputs", inputs(r).join("\n") || "—"],
                ["output", (it.shapes || []).map(shape).join(", ") || "—"],
                ["params", (d.params || 0).toLocaleString()],
                ["batch stats", (d.state || 0).toLocaleString()],
                ["FLOPs", human(d.flops || 0)]];
    if (it.kind === "cluster" || (d.layers || 1) > 1) rows.push(["layers", String(d.layers)]);
    if (G.policy) rows.push(["trains", {trainable: "trainable", frozen: "frozen",
                                        mixed: "mixed (part trains)"}[it.status] || "— (no parameters)"]);
    var t = "<h3 id='detail-title'></h3><table id='details'>" + rows.map(function (x) {
      return "<tr data-key='" + x[0] + "'><td>" + x[0] + "</td><td></td></tr>";
    }).join("") + "</table>";
    showPanel(t);
    document.getElementById("detail-title").textContent = it.label;
    var cells = panel.querySelectorAll("#details tr td:last-child");
    rows.forEach(function (x, i) { cells[i].textContent = x[1]; cells[i].style.whiteSpace = "pre-line"; });
    Array.prototype.forEach.call(view.querySelectorAll("g.node"), function (g) {
      g.classList.toggle("selected", g.getAttribute("data-id") === r);
    });
  }
  function showPanel(inner) {
    panel.innerHTML = "<div class='caption'></div>" + (G.error ? "<div class='error'></div>" : "") + inner;
    panel.querySelector(".caption").textContent = G.caption;
    if (G.error) panel.querySelector(".error").textContent =
      "Tracing failed in " + (G.error.path || G.name) + " (" + G.error.type + "):\n" + G.error.message;
  }

  function matches(q) {
    q = q.trim().toLowerCase();
    if (!q) return [];
    var out = [];
    G.modules.forEach(function (m) { if (m.path.toLowerCase().indexOf(q) >= 0) out.push("m:" + m.path); });
    G.nodes.forEach(function (n) { if (n.id.toLowerCase().indexOf(q) >= 0) out.push(n.id); });
    return out;
  }
  // Show a node or module (id, or "m:" + module path): expand what hides it, select it.
  function reveal(r) {
    if (!known(r)) return false;
    var path = r.slice(0, 2) === "m:" ? r.slice(2) : r;
    var scope = r.slice(0, 2) === "m:" ? path.split("/").slice(0, -1).join("/") : nodes[r].scope;
    prefixes(scope).forEach(function (p) { if (p in expanded) expanded[p] = true; });
    if (r.slice(0, 2) === "m:") expanded[path] = false;
    hit = r;
    render(); select(r); center(r);
  }
  function showResults() {
    var found = matches(search.value);
    results.innerHTML = "";
    found.slice(0, 100).forEach(function (r) {
      var d = document.createElement("div");
      d.textContent = r.replace(/^m:/, "") + (r.slice(0, 2) === "m:" ? " (module)" : "");
      d.setAttribute("data-id", r);
      d.addEventListener("click", function () { results.style.display = "none"; reveal(r); });
      results.appendChild(d);
    });
    results.style.display = found.length ? "block" : "none";
  }
  search.addEventListener("input", showResults);
  search.addEventListener("keydown", function (ev) {
    if (ev.key === "Enter") { var f = matches(search.value); if (f.length) { results.style.display = "none"; reveal(f[0]); } }
    if (ev.key === "Escape") results.style.display = "none";
  });

  var drag = null;
  svg.addEventListener("mousedown", function (ev) { drag = {x: ev.clientX - zoom.x, y: ev.clientY - zoom.y}; });
  window.addEventListener("mousemove", function (ev) {
    if (drag) { zoom.x = ev.clientX - drag.x; zoom.y = ev.clientY - drag.y; apply(); }
  });
  window.addEventListener("mouseup", function () { drag = null; });
  svg.addEventListener("wheel", function (ev) {
    ev.preventDefault();
    var r = svg.getBoundingClientRect(), mx = ev.clientX - r.left, my = ev.clientY - r.top;
    var f = Math.exp(-ev.deltaY * 0.0015), k = Math.min(8, Math.max(0.02, zoom.k * f));
    zoom.x = mx - (mx - zoom.x) * k / zoom.k; zoom.y = my - (my - zoom.y) * k / zoom.k; zoom.k = k;
    apply();
  }, {passive: false});
  document.getElementById("expand-all").addEventListener("click", function () { setAll(true); });
  document.getElementById("collapse-all").addEventListener("click", function () { setAll(false); });
  document.getElementById("fit").addEventListener("click", fit);
  document.getElementById("title").textContent = G.name;

  showPanel("<p>Click a node for its details; + expands a module, − collapses it.</p>");
  render(); fit();
  // for scripts and tests driving the page
  window.zooViewer = {expand: expand, collapse: collapse, reveal: reveal, select: select,
                      search: matches, visible: function () { return layout.order.slice(); },
                      zoom: zoom};
})();

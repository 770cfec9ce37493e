/* Draw the dashboard's charts with uPlot from <script type="application/json"> data (numbers arrive as strings). */
(function () {
  "use strict";
  var COLORS = ["#2457c5", "#e8590c", "#137a3a", "#9c36b5", "#b42318", "#0c8599"];
  function num(v) { return v === null || v === undefined || v === "" ? null : Number(v); }
  function nearest(xs, t) {
    var lo = 0, hi = xs.length - 1;
    if (hi < 0) return -1;
    while (lo < hi) { var mid = (lo + hi) >> 1; if (xs[mid] < t) lo = mid + 1; else hi = mid; }
    if (lo > 0 && Math.abs(xs[lo - 1] - t) < Math.abs(xs[lo] - t)) lo -= 1;
    return lo;
  }
  function yValues(u, splits) {  // as many decimals as the tick step needs (prices like 0.0534 or 51000)
    var step = splits.length > 1 ? Math.abs(splits[1] - splits[0]) : Math.abs(splits[0] || 1);
    var d = step > 0 ? Math.min(10, Math.max(0, Math.ceil(-Math.log10(step)))) : 0;
    return splits.map(function (v) { return v === null ? "" : v.toFixed(d); });
  }
  function ySize(u, values) {  // wide enough for the longest label
    if (!values) return 50;
    return 18 + 7 * Math.max.apply(null, values.map(function (v) { return String(v).length; }));
  }
  function opts(el, series, extra) {
    var o = { width: Math.max(el.clientWidth, 200), height: el.clientWidth < 500 ? 200 : 260,
              series: [{}].concat(series), scales: { x: { time: true } }, legend: { live: true },
              axes: [{}, { values: yValues, size: ySize }] };
    for (var k in (extra || {})) o[k] = extra[k];
    return o;
  }
  function line(label, i, dash) { return { label: label, stroke: COLORS[i % COLORS.length], width: 1.5, spanGaps: true, dash: dash }; }
  function points(label, color) {
    return { label: label, stroke: color, fill: color, paths: function () { return null; },
             points: { show: true, size: 9, stroke: color, fill: color } };
  }
  function empty(el, text) { el.innerHTML = '<p class="muted">' + text + "</p>"; el.style.minHeight = "0"; }
  var draw = {
    lines: function (el, d) {
      if (!d.x.length) return empty(el, "No equity snapshots yet (the beat schedule takes one a minute).");
      var data = [d.x].concat(d.series.map(function (s) { return s.values.map(num); }));
      return new uPlot(opts(el, d.series.map(function (s, i) { return line(s.label, i); })), data, el);
    },
    price: function (el, d) {
      var xs = d.x.slice(), close = d.close.slice(), markers = d.markers;
      var pad = xs.length > 1 ? 2 * (xs[1] - xs[0]) : 0;
      var inside = markers.filter(function (m) { return xs.length && m.t >= xs[0] - pad && m.t <= xs[xs.length - 1] + pad; });
      if (!xs.length || (markers.length && !inside.length)) {
        // No stored candles around the fills (e.g. a webhook strategy, or a replayed feed): draw the fills' prices.
        xs = []; close = [];
        markers.forEach(function (m) { xs.push(m.t); close.push(num(m.price)); });
        if (d.mark && (!xs.length || d.mark.t > xs[xs.length - 1])) { xs.push(d.mark.t); close.push(num(d.mark.price)); }
      } else { markers = inside; }
      if (xs.length < 2) return empty(el, "No candles of this market are stored, and too few fills to draw.");
      var entries = xs.map(function () { return null; }), exits = entries.slice();
      markers.forEach(function (m) {
        var i = nearest(xs, m.t); if (i < 0) return;
        (m.exit ? exits : entries)[i] = num(m.price);
      });
      return new uPlot(opts(el, [line(d.symbol, 0), points("entries", "#137a3a"), points("exits", "#b42318")]),
                       [xs, close, entries, exits], el);
    },
    equity: function (el, d) {
      if (d.x.length < 2) return empty(el, "No closed trades.");
      return new uPlot(opts(el, [line("equity", 0)]), [d.x, d.equity.map(num)], el);
    },
    drawdown: function (el, d) {
      if (d.x.length < 2) return empty(el, "No closed trades.");
      return new uPlot(opts(el, [{ label: "drawdown %", stroke: "#b42318", fill: "rgba(180,35,24,.12)", width: 1.5 }]),
                       [d.x, d.drawdown.map(num)], el);
    },
    compare: function (el, runs) {
      var xs = Array.from(new Set([].concat.apply([], runs.map(function (r) { return r.x; })))).sort(function (a, b) { return a - b; });
      if (xs.length < 2) return empty(el, "No closed trades.");
      var at = {}; xs.forEach(function (t, i) { at[t] = i; });
      var data = [xs].concat(runs.map(function (r) {
        var out = xs.map(function () { return null; });
        r.x.forEach(function (t, i) { out[at[t]] = num(r.equity[i]); });
        return out;
      }));
      return new uPlot(opts(el, runs.map(function (r, i) { return line(r.label, i); })), data, el);
    }
  };
  function drawAll(root) {
    (root || document).querySelectorAll("[data-chart]").forEach(function (el) {
      if (el.dataset.drawn) return;
      var src = document.getElementById(el.dataset.source);
      if (!src || typeof uPlot === "undefined") return;
      el.dataset.drawn = "1";
      var plot = draw[el.dataset.chart](el, JSON.parse(src.textContent));
      if (plot) {
        window.addEventListener("resize", function () { plot.setSize({ width: Math.max(el.clientWidth, 200), height: plot.height }); });
        el.dataset.ready = "1";
      } else { el.dataset.ready = "1"; }
    });
  }
  document.addEventListener("DOMContentLoaded", function () { drawAll(document); });
})();

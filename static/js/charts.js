// rolloutadmin dashboard: the Chart.js charts of the flag page (metrics and guardrail tiles). Loaded as a
// file (no inline script anywhere) so that the pages can run under a strict Content-Security-Policy.
(function () {
  "use strict";

  var charts = {};
  var COLORS = { treatment: "#2563eb", baseline: "#9ca3af", savings: "#059669" };

  // --- time axis: a linear x scale in epoch milliseconds, labelled in UTC ---
  var MINUTE = 60000, HOUR = 60 * MINUTE, DAY = 24 * HOUR;
  var MONTHS = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"];
  var TICK_STEPS = [MINUTE, 2 * MINUTE, 5 * MINUTE, 10 * MINUTE, 15 * MINUTE, 30 * MINUTE, HOUR, 2 * HOUR,
                    3 * HOUR, 6 * HOUR, 12 * HOUR, DAY, 2 * DAY];

  function pad2(n) { return String(n).padStart(2, "0"); }
  function clock(ms) { var d = new Date(ms); return pad2(d.getUTCHours()) + ":" + pad2(d.getUTCMinutes()); }
  function day(ms) { var d = new Date(ms); return d.getUTCDate() + " " + MONTHS[d.getUTCMonth()]; }

  var SHORT_SPAN = 26 * HOUR; // a 24 h window, padded, still reads as clock times

  // The date at midnight ("27 Nov"); else HH:MM over a day or so, "27 Nov 12:00" over longer spans.
  function timeLabel(ms, span) {
    if (ms % DAY === 0) return day(ms);
    return span <= SHORT_SPAN ? clock(ms) : day(ms) + " " + clock(ms);
  }

  function bucketLabel(from, step, span) {
    return (span <= SHORT_SPAN ? "" : day(from) + " ") + clock(from) + "–" + clock(from + step) + " UTC";
  }

  // Ticks on whole minutes, hours or days (UTC), as many as fit the chart's width.
  function timeTicks(scale) {
    var span = scale.max - scale.min;
    var room = Math.max(2, Math.floor(scale.width / (span <= SHORT_SPAN ? 60 : 95)));
    var step = TICK_STEPS[TICK_STEPS.length - 1];
    for (var i = 0; i < TICK_STEPS.length; i++) {
      if (span / TICK_STEPS[i] <= room) { step = TICK_STEPS[i]; break; }
    }
    var ticks = [];
    for (var v = Math.ceil(scale.min / step) * step; v <= scale.max; v += step) ticks.push({ value: v });
    scale.ticks = ticks;
  }

  function timeScale(range, titled) {
    return {
      type: "linear", min: range.min, max: range.max, afterBuildTicks: timeTicks,
      title: { display: titled !== false, text: "time (UTC)" },
      ticks: { maxRotation: 0, callback: function (value) { return timeLabel(value, this.max - this.min); } }
    };
  }

  // --- metric charts: created once, updated in place from the data the metrics partial carries ---
  var MARKER_COLORS = { rollout: "#4b5563", alert_fired: "#dc2626", alert_resolved: "#059669" };
  var SEVERITY_COLORS = { critical: "#dc2626", warning: "#d97706" };
  var HOT_PX = 6; // how near the pointer must be to a marker line to show what it was

  function readData() {
    var node = document.getElementById("chart-data");
    return node ? JSON.parse(node.textContent) : null;
  }

  function points(labels, values) {
    var out = [];
    labels.forEach(function (label, i) {
      if (values[i] !== null && values[i] !== undefined) out.push({ x: Date.parse(label), y: values[i] });
    });
    return out;
  }

  function datasetsFor(kind, data) {
    var t = data.treatment, b = data.baseline, modes = data.series.modes, labels = data.series.labels;
    var gap = data.step_ms * 1.5; // no line across buckets without calls
    function line(label, values, color, dashed) {
      return { label: label, data: points(labels, values), borderColor: color, backgroundColor: color,
               spanGaps: gap, borderDash: dashed ? [6, 4] : [], pointRadius: 2, tension: 0.2 };
    }
    var out;
    if (kind === "error_rate") {
      out = [line(t, modes[t].error_rate, COLORS.treatment), line(b, modes[b].error_rate, COLORS.baseline)];
    } else if (kind === "latency") {
      out = [line(t + " p50", modes[t].p50_latency_ms, COLORS.treatment),
             line(t + " p95", modes[t].p95_latency_ms, COLORS.treatment, true),
             line(b + " p50", modes[b].p50_latency_ms, COLORS.baseline),
             line(b + " p95", modes[b].p95_latency_ms, COLORS.baseline, true)];
    } else if (kind === "tokens") {
      out = [line(t, modes[t].avg_tokens_per_call, COLORS.treatment),
             line(b, modes[b].avg_tokens_per_call, COLORS.baseline)];
    } else {
      out = [line("savings", data.series.token_savings, COLORS.savings)];
    }
    (data.thresholds[kind] || []).forEach(function (g) {
      var color = SEVERITY_COLORS[g.severity] || SEVERITY_COLORS.warning;
      var horizontal = g.value !== null;
      // A line following the baseline is drawn where the baseline has calls: a short dash at a lone bucket.
      out.push({ label: g.label, short: g.short, guide: horizontal ? "horizontal" : "follows", data: g.points,
                 borderColor: color, backgroundColor: color, borderDash: [8, 4], borderWidth: 1.5,
                 pointStyle: "line", pointRadius: horizontal ? 0 : 9, pointBorderWidth: 2, pointHitRadius: 0,
                 spanGaps: horizontal ? true : gap, tension: 0 });
    });
    return out;
  }

  function markerAt(chart, x, y) {
    var area = chart.chartArea, markers = (chart.options.plugins.rolloutGuides || {}).markers || [];
    if (x < area.left - HOT_PX || x > area.right + HOT_PX || y < area.top || y > area.bottom) return null;
    var best = null, bestGap = HOT_PX + 1;
    markers.forEach(function (m) {
      var gap = Math.abs(chart.scales.x.getPixelForValue(m.x) - x);
      if (gap < bestGap) { best = m; bestGap = gap; }
    });
    return best;
  }

  function showTip(chart, marker) {
    var tip = chart.canvas.parentNode.querySelector(".chart-tip");
    if (!tip) return;
    if (!marker) { tip.hidden = true; return; }
    tip.textContent = marker.text;
    tip.dataset.kind = marker.kind;
    tip.hidden = false;
    // CSSOM, not a style attribute: allowed by the Content-Security-Policy.
    var px = chart.scales.x.getPixelForValue(marker.x);
    var width = tip.offsetWidth, box = chart.canvas.parentNode.clientWidth;
    tip.style.left = Math.max(0, Math.min(box - width, px - width / 2)) + "px";
    tip.style.top = Math.max(0, chart.chartArea.top - tip.offsetHeight - 2) + "px";
  }

  // Threshold labels on their lines, marker lines, and what a marker was when the pointer is near it.
  var guidePlugin = {
    id: "rolloutGuides",
    afterDatasetsDraw: function (chart) {
      var opts = chart.options.plugins.rolloutGuides || {};
      var area = chart.chartArea, ctx = chart.ctx, xs = chart.scales.x, ys = chart.scales.y;
      ctx.save();
      ctx.font = "11px system-ui, sans-serif";
      ctx.textAlign = "right";
      ctx.textBaseline = "bottom";
      chart.data.datasets.forEach(function (ds, i) {
        if (!ds.guide || !ds.data.length || !chart.isDatasetVisible(i)) return;
        var last = ds.data[ds.data.length - 1];
        var px = Math.min(xs.getPixelForValue(last.x), area.right) - 4, py = ys.getPixelForValue(last.y) - 2;
        if (py < area.top + 10 || py > area.bottom) return;
        ctx.fillStyle = ds.borderColor;
        ctx.fillText(ds.short, px, py);
      });
      (opts.markers || []).forEach(function (m) {
        var px = xs.getPixelForValue(m.x);
        if (px < area.left || px > area.right) return;
        var hot = chart.$hotMarker === m;
        ctx.strokeStyle = MARKER_COLORS[m.kind] || MARKER_COLORS.rollout;
        ctx.fillStyle = ctx.strokeStyle;
        ctx.lineWidth = hot ? 2 : 1;
        ctx.setLineDash(m.kind === "rollout" ? [4, 3] : [2, 2]);
        ctx.beginPath(); ctx.moveTo(px, area.top); ctx.lineTo(px, area.bottom); ctx.stroke();
        ctx.setLineDash([]);
        ctx.beginPath(); ctx.moveTo(px - 4, area.top); ctx.lineTo(px + 4, area.top); ctx.lineTo(px, area.top + 6);
        ctx.closePath(); ctx.fill();
      });
      ctx.restore();
    },
    beforeEvent: function (chart, args) {
      var e = args.event;
      var hot = e.type === "mouseout" ? null : markerAt(chart, e.x, e.y);
      if (hot !== (chart.$hotMarker || null)) {
        chart.$hotMarker = hot;
        showTip(chart, hot);
        // The data tooltip filters on the marker: clear it so that it is worked out again for this event.
        if (chart.tooltip) chart.tooltip.setActiveElements([], { x: e.x, y: e.y });
        args.changed = true;
      }
    }
  };

  function setEmpty(canvas, data) {
    var box = canvas.parentNode, note = box.querySelector(".chart-empty");
    box.classList.toggle("is-empty", !data.has_data);
    if (note) { note.textContent = data.empty_note; note.hidden = data.has_data; }
  }

  // The lists under the charts: what the dashed lines and the markers are, readable without a pointer.
  function fillList(id, items, text) {
    var list = document.getElementById(id);
    if (!list) return;
    var lines = items.map(text);
    if (list.dataset.lines === JSON.stringify(lines)) return;
    list.dataset.lines = JSON.stringify(lines);
    list.replaceChildren.apply(list, lines.map(function (line, i) {
      var li = document.createElement("li");
      li.textContent = line;
      if (items[i].kind) li.dataset.kind = items[i].kind;
      return li;
    }));
    list.hidden = lines.length === 0;
    var empty = document.getElementById(id + "-none");
    if (empty) empty.hidden = lines.length !== 0;
  }

  function renderNotes(data) {
    var guides = [];
    Object.keys(data.thresholds).forEach(function (kind) { guides = guides.concat(data.thresholds[kind]); });
    fillList("chart-thresholds", guides, function (g) { return g.label + " (" + g.severity + ")"; });
    fillList("chart-markers", data.markers, function (m) { return m.text; });
  }

  function chartOptions(data) {
    return {
      animation: false, responsive: true, maintainAspectRatio: false,
      interaction: { mode: "nearest", axis: "x", intersect: false },
      scales: { x: timeScale(data.x_range), y: { beginAtZero: true, grace: "8%" } },
      plugins: {
        legend: { position: "bottom", labels: { filter: function (item, chartData) {
          return !chartData.datasets[item.datasetIndex].guide;
        } } },
        tooltip: {
          // A marker's own tip replaces the data tooltip while the pointer is on it.
          filter: function (item) { return !item.chart.$hotMarker && item.dataset.guide !== "horizontal"; },
          callbacks: { title: function (items) {
            if (!items.length) return "";
            var x = items[0].chart.scales.x;
            return bucketLabel(items[0].parsed.x, data.step_ms, x.max - x.min);
          } }
        },
        rolloutGuides: { markers: data.markers }
      }
    };
  }

  function renderCharts() {
    var data = readData();
    if (!data || typeof Chart === "undefined") return;
    document.querySelectorAll("canvas[data-chart]").forEach(function (canvas) {
      var kind = canvas.dataset.chart, fresh = datasetsFor(kind, data);
      var existing = charts[canvas.id];
      setEmpty(canvas, data);
      if (existing && existing.canvas === canvas) {
        var same = existing.data.datasets.length === fresh.length && existing.data.datasets.every(
          function (ds, i) { return ds.label === fresh[i].label; });
        if (same) {
          existing.data.datasets.forEach(function (ds, i) { ds.data = fresh[i].data; ds.spanGaps = fresh[i].spanGaps; });
        } else {
          existing.data.datasets = fresh;
        }
        existing.options = chartOptions(data);
        existing.$hotMarker = null;
        showTip(existing, null);
        existing.update("none");
        return;
      }
      charts[canvas.id] = new Chart(canvas, {
        type: "line", data: { datasets: fresh }, options: chartOptions(data), plugins: [guidePlugin]
      });
    });
    renderNotes(data);
    window.rolloutCharts = charts; // for the browser tests and the curious
  }

  // --- guardrail tiles: estimate, confidence interval (band) and threshold over the window ---
  var guardrailCharts = {};

  function renderGuardrails() {
    var node = document.getElementById("guardrail-data");
    if (!node || typeof Chart === "undefined") return;
    var data = JSON.parse(node.textContent), page = readData();
    var xs = data.labels.map(function (label) { return Date.parse(label); });
    // The metric charts' range when there are any, so the tiles line up with them; else the whole window.
    var range = page ? page.x_range : { min: xs[0], max: xs[xs.length - 1] };
    // Dashed vertical lines where the rollout changed (the interval starts again there).
    var markers = data.markers.map(function (m) {
      var at = Date.parse(m.at);
      return { x: at, kind: "rollout", text: clock(at) + " UTC " + m.text };
    });
    function pts(values) { return xs.map(function (x, i) { return { x: x, y: values[i] }; }); }
    document.querySelectorAll("canvas[data-guardrail]").forEach(function (canvas) {
      var rule = canvas.dataset.guardrail, line = data.rules[rule];
      if (!line) return;
      if (guardrailCharts[rule]) guardrailCharts[rule].destroy();
      var threshold = xs.map(function (x) { return { x: x, y: line.threshold }; });
      guardrailCharts[rule] = new Chart(canvas, {
        type: "line",
        data: { datasets: [
          { label: "interval low", data: pts(line.low), borderColor: "#93c5fd", pointRadius: 0, borderWidth: 1, spanGaps: false },
          { label: "interval high", data: pts(line.high), borderColor: "#93c5fd", backgroundColor: "rgba(147,197,253,0.3)",
            fill: "-1", pointRadius: 0, borderWidth: 1, spanGaps: false },
          { label: "estimate", data: pts(line.estimate), borderColor: COLORS.treatment, pointRadius: 0, borderWidth: 2 },
          { label: "threshold", data: threshold, borderColor: "#dc2626", borderDash: [6, 4], pointRadius: 0, borderWidth: 1 }
        ] },
        options: { animation: false, responsive: true, maintainAspectRatio: false,
                   interaction: { mode: "nearest", axis: "x", intersect: false },
                   scales: { x: timeScale(range, false) },
                   plugins: { legend: { display: false }, rolloutGuides: { markers: markers },
                              tooltip: { filter: function (item) { return !item.chart.$hotMarker; } } } },
        plugins: [guidePlugin]
      });
    });
    window.guardrailCharts = guardrailCharts;
  }

  document.addEventListener("DOMContentLoaded", function () {
    renderCharts();
    renderGuardrails();
  });
  document.addEventListener("htmx:load", function (event) {
    if (event.target.id === "metrics" || (event.target.querySelector && event.target.querySelector("#chart-data"))) {
      renderCharts();
    }
    if (event.target.id === "guardrails") renderGuardrails();
  });
})();

// rolloutadmin dashboard: the Chart.js charts of the flag page (metrics and guardrail tiles). Loaded as a
// file (no inline script anywhere) so that the pages can run under a strict Content-Security-Policy.
(function () {
  "use strict";

  var charts = {};
  var COLORS = { treatment: "#2563eb", baseline: "#9ca3af", savings: "#059669" };

  // --- charts: created once, updated in place from the data the metrics partial carries ---
  function readData() {
    var node = document.getElementById("chart-data");
    return node ? JSON.parse(node.textContent) : null;
  }

  function shortLabel(iso) {
    var d = new Date(iso);
    var hh = String(d.getUTCHours()).padStart(2, "0");
    var mm = String(d.getUTCMinutes()).padStart(2, "0");
    return (d.getUTCMonth() + 1) + "/" + d.getUTCDate() + " " + hh + ":" + mm;
  }

  function datasetsFor(kind, data) {
    var t = data.treatment, b = data.baseline, modes = data.series.modes;
    function line(label, values, color, dashed) {
      return { label: label, data: values, borderColor: color, backgroundColor: color, spanGaps: true,
               borderDash: dashed ? [6, 4] : [], pointRadius: 1, tension: 0.2 };
    }
    if (kind === "error_rate") {
      return [line(t, modes[t].error_rate, COLORS.treatment), line(b, modes[b].error_rate, COLORS.baseline)];
    }
    if (kind === "latency") {
      return [line(t + " p50", modes[t].p50_latency_ms, COLORS.treatment),
              line(t + " p95", modes[t].p95_latency_ms, COLORS.treatment, true),
              line(b + " p50", modes[b].p50_latency_ms, COLORS.baseline),
              line(b + " p95", modes[b].p95_latency_ms, COLORS.baseline, true)];
    }
    if (kind === "tokens") {
      return [line(t, modes[t].avg_tokens_per_call, COLORS.treatment),
              line(b, modes[b].avg_tokens_per_call, COLORS.baseline)];
    }
    return [line("savings", data.series.token_savings, COLORS.savings)];
  }

  function renderCharts() {
    var data = readData();
    if (!data || typeof Chart === "undefined") return;
    var labels = data.series.labels.map(shortLabel);
    document.querySelectorAll("canvas[data-chart]").forEach(function (canvas) {
      var kind = canvas.dataset.chart;
      var existing = charts[canvas.id];
      if (existing && existing.canvas === canvas) {
        existing.data.labels = labels;
        var fresh = datasetsFor(kind, data);
        existing.data.datasets.forEach(function (ds, i) { ds.data = fresh[i].data; });
        existing.update("none");
        return;
      }
      charts[canvas.id] = new Chart(canvas, {
        type: "line",
        data: { labels: labels, datasets: datasetsFor(kind, data) },
        options: { animation: false, responsive: true, maintainAspectRatio: false,
                   scales: { y: { beginAtZero: true } }, plugins: { legend: { position: "bottom" } } }
      });
    });
    window.rolloutCharts = charts; // for the browser tests and the curious
  }

  // --- guardrail tiles: estimate, confidence interval (band) and threshold over the window ---
  var guardrailCharts = {};
  // Dashed vertical lines where the rollout changed (the interval starts again there).
  var markerPlugin = {
    id: "rolloutMarkers",
    afterDatasetsDraw: function (chart) {
      var indices = (chart.options.plugins.rolloutMarkers || {}).indices || [];
      var x = chart.scales.x, area = chart.chartArea, ctx = chart.ctx;
      ctx.save();
      ctx.strokeStyle = "#6b7280";
      ctx.setLineDash([4, 4]);
      indices.forEach(function (i) {
        var px = x.getPixelForValue(i);
        ctx.beginPath(); ctx.moveTo(px, area.top); ctx.lineTo(px, area.bottom); ctx.stroke();
      });
      ctx.restore();
    }
  };

  function markerIndices(labels, markers) {
    return markers.map(function (m) {
      var at = new Date(m.at).getTime();
      for (var i = 0; i < labels.length; i++) { if (new Date(labels[i]).getTime() >= at) return i; }
      return labels.length - 1;
    });
  }

  function renderGuardrails() {
    var node = document.getElementById("guardrail-data");
    if (!node || typeof Chart === "undefined") return;
    var data = JSON.parse(node.textContent);
    var labels = data.labels.map(shortLabel);
    var indices = markerIndices(data.labels, data.markers);
    document.querySelectorAll("canvas[data-guardrail]").forEach(function (canvas) {
      var rule = canvas.dataset.guardrail, line = data.rules[rule];
      if (!line) return;
      if (guardrailCharts[rule]) guardrailCharts[rule].destroy();
      var threshold = labels.map(function () { return line.threshold; });
      guardrailCharts[rule] = new Chart(canvas, {
        type: "line",
        data: { labels: labels, datasets: [
          { label: "interval low", data: line.low, borderColor: "#93c5fd", pointRadius: 0, borderWidth: 1, spanGaps: false },
          { label: "interval high", data: line.high, borderColor: "#93c5fd", backgroundColor: "rgba(147,197,253,0.3)",
            fill: "-1", pointRadius: 0, borderWidth: 1, spanGaps: false },
          { label: "estimate", data: line.estimate, borderColor: COLORS.treatment, pointRadius: 0, borderWidth: 2 },
          { label: "threshold", data: threshold, borderColor: "#dc2626", borderDash: [6, 4], pointRadius: 0, borderWidth: 1 }
        ] },
        options: { animation: false, responsive: true, maintainAspectRatio: false,
                   plugins: { legend: { display: false }, rolloutMarkers: { indices: indices } } },
        plugins: [markerPlugin]
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

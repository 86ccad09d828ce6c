// The staff dashboard (console/templates/console/dashboard.html): draws the figures of
// /admin/dashboard/data.json (console/dashboard.py) with Chart.js, every 5 s.
//
// Each chart sits in a box of fixed height (.tf-chart) and is drawn with
// `maintainAspectRatio: false`: Chart.js then fills that box and the page never grows.
// One y axis per unit; a chart with nothing to draw says why and what to do instead.
(function () {
  "use strict";
  const page = document.getElementById("tf-dashboard");
  const SOURCE = page.dataset.source;
  const REPORT = page.dataset.report;
  const REFRESH_MS = 5000;
  const charts = {};

  function axis(title, extra) {
    return Object.assign({beginAtZero: true, title: {display: true, text: title}}, extra || {});
  }

  function chart(id, type, options) {
    const canvas = document.getElementById(id);
    charts[id] = new Chart(canvas, {
      type: type,
      data: {labels: [], datasets: []},
      options: Object.assign(
        {animation: false, responsive: true, maintainAspectRatio: false}, options || {}),
    });
    return charts[id];
  }

  // Draws the data, or hides the chart behind a line that says why it is empty.
  function set(id, labels, datasets, emptyText) {
    const c = charts[id];
    c.data.labels = labels;
    c.data.datasets = datasets;
    c.update();
    const empty = c.canvas.parentElement.querySelector(".tf-empty");
    const nothing = datasets.every(d => d.data.every(v => v === null || v === undefined || Number(v) === 0));
    empty.textContent = nothing ? emptyText : "";
    empty.hidden = !nothing;
    c.canvas.parentElement.classList.toggle("tf-is-empty", nothing);
  }

  // A moment as the viewer reads it: their time zone, their locale.
  function localTime(iso, withSeconds) {
    const options = {hour: "2-digit", minute: "2-digit"};
    if (withSeconds) Object.assign(options, {second: "2-digit", timeZoneName: "short"});
    return new Date(iso).toLocaleTimeString([], options);
  }

  function money(currency) {
    const format = new Intl.NumberFormat([], {style: "currency", currency: currency});
    return value => format.format(value);
  }

  function byDay(rows) {
    const days = [...new Set(rows.map(r => r.bucket.slice(0, 10)))];
    const sum = (field) => days.map(d => rows.filter(r => r.bucket.slice(0, 10) === d)
      .reduce((total, r) => total + Number(r[field]), 0));
    return [days, [
      {label: "revenue", data: sum("revenue")},
      {label: "cost", data: sum("cost")},
      {label: "margin", data: sum("margin")},
    ]];
  }

  chart("chart-traffic", "line", {
    interaction: {mode: "index", intersect: false},
    scales: {
      x: {title: {display: true, text: "minute (your time)"}},
      y: axis("tokens/s", {position: "left"}),
      requests: axis("requests/s", {position: "right", grid: {drawOnChartArea: false}}),
    },
  });
  chart("chart-ttft", "bar", {scales: {y: axis("ms")}});
  chart("chart-queues", "bar", {scales: {y: axis("requests waiting", {ticks: {precision: 0}})}});
  chart("chart-shed", "bar", {scales: {y: axis("% of requests shed", {max: 100})}});
  chart("chart-power", "bar", {
    scales: {
      y: axis("W", {position: "left"}),
      efficiency: axis("tokens per watt", {position: "right", grid: {drawOnChartArea: false}}),
    },
  });
  chart("chart-margin-tier", "line", {scales: {y: axis("per day")}});
  chart("chart-margin-model", "line", {scales: {y: axis("per day")}});
  chart("chart-top", "bar", {indexAxis: "y", scales: {x: axis("tokens")}});
  chart("chart-invoices", "doughnut");

  function moneyAxes(currency) {
    const format = money(currency);
    for (const id of ["chart-margin-tier", "chart-margin-model"]) {
      const y = charts[id].options.scales.y;
      y.title.text = currency + " per day";
      y.ticks = {callback: format};
    }
  }

  function draw(d) {
    const w = d.windows;
    const noTraffic = "No requests in the last " + w.traffic_minutes + " minutes — send one " +
      "with the demo key (README, “Calling it”), or run .venv/bin/tf demo.";
    set("chart-traffic", d.traffic.map(r => localTime(r.minute)), [
      {label: "tokens/s", data: d.traffic.map(r => r.tokens_per_s), yAxisID: "y"},
      {label: "requests/s", data: d.traffic.map(r => r.requests_per_s), yAxisID: "requests"},
    ], noTraffic);
    set("chart-ttft", d.ttft.map(r => r.tier), [
      {label: "p50", data: d.ttft.map(r => r.p50_ms)},
      {label: "p99", data: d.ttft.map(r => r.p99_ms)},
    ], "No streamed requests in the last " + w.latency_minutes + " minutes: time to first " +
      "token is measured on streamed answers — send one with \"stream\": true and the demo key " +
      "(README, “Calling it”).");
    const tiers = [...new Set(d.admission.queues.flatMap(q => Object.keys(q.waiting)))];
    set("chart-queues", tiers, d.admission.queues.map(q => ({
      label: q.model + " (running " + q.running + ")", data: tiers.map(t => q.waiting[t]),
    })), d.admission.queues.length
      ? "No request is waiting: requests queue only while every backend of their model is " +
        "at capacity."
      : "No model pools: register a backend (Fleet › Backends) to serve a model.");
    const shedTiers = Object.keys(d.admission.by_tier);
    const served = shedTiers.reduce((n, t) => n + d.admission.by_tier[t].served, 0);
    set("chart-shed", shedTiers, [{label: "% of requests shed", data: shedTiers.map(t => {
      const c = d.admission.by_tier[t], all = c.served + c.shed;
      return all ? 100 * c.shed / all : 0;
    })}], served
      ? "No request shed: all " + served + " requests since the gateways started were admitted."
      : "No requests since the gateways started — send one with the demo key (README).");
    set("chart-power", d.backends.map(b => b.name), [
      {label: "power (W)", data: d.backends.map(b => b.power_w), yAxisID: "y"},
      {label: "tokens per watt", data: d.backends.map(b => b.tokens_per_watt),
       yAxisID: "efficiency"},
    ], d.backends.length
      ? "No power readings: the metering.scrape_telemetry task (Celery beat, started by " +
        "make up) reads the backends' GPU exporters; none has reported yet."
      : "No backends: register one (Fleet › Backends).");
    backendsTable(d.backends);
    month(d.month);
    moneyAxes(d.month.currency);
    const noMargins = "No margins in the last " + w.margin_days + " days: billing.compute_margins " +
      "(Celery beat, every 15 min) computes them from priced usage on backends with a cost model " +
      "(Billing › Cost models).";
    set("chart-margin-tier", ...byDay(d.margins.tier), noMargins);
    set("chart-margin-model", ...byDay(d.margins.model), noMargins);
    set("chart-top", d.top_accounts.map(a => a.name), [
      {label: "tokens", data: d.top_accounts.map(a => Number(a.tokens))},
    ], "No requests in the last " + w.top_accounts_hours + " hours — send one with the demo key " +
      "(README, “Calling it”).");
    set("chart-invoices", d.invoices.map(i => i.status + " / " + i.payment), [
      {label: "invoices", data: d.invoices.map(i => i.invoices)},
    ], "No invoices yet: “Close a month” on Billing › Invoices makes them once a month is over.");
    updated(d.at);
  }

  function updated(iso) {
    const line = document.getElementById("tf-updated");
    const time = document.createElement("time");
    time.dateTime = iso;
    time.title = iso + " (UTC)";
    time.textContent = localTime(iso, true);
    line.replaceChildren("Last update: ", time);
    line.classList.remove("tf-stale");
  }

  function failed(why) {
    const line = document.getElementById("tf-updated");
    const time = line.querySelector("time");
    line.replaceChildren(
      "Update failed at " + localTime(new Date().toISOString(), true) + " (" + why + "); " +
      (time ? "showing the figures of " + time.textContent : "no figures yet") +
      ". Retrying every " + REFRESH_MS / 1000 + " s.");
    line.classList.add("tf-stale");
  }

  function backendsTable(backends) {
    const body = document.querySelector("#table-backends tbody");
    body.replaceChildren(...backends.map(b => {
      const row = document.createElement("tr");
      for (const v of [b.name, b.enabled, b.health, b.capacity, b.power_w, b.tokens_per_watt]) {
        const cell = document.createElement("td");
        cell.textContent = v === null || v === undefined ? "–" : (typeof v === "number" ? v.toFixed(1) : v);
        row.appendChild(cell);
      }
      return row;
    }));
  }

  function cells(row, values, tag) {
    row.replaceChildren(...values.map(v => {
      const cell = document.createElement(tag);
      cell.textContent = v;
      return cell;
    }));
    return row;
  }

  function month(m) {
    document.getElementById("month-period").textContent = m.period;
    document.getElementById("month-currency").textContent = m.currency;
    document.getElementById("month-report").href = REPORT.replace("PERIOD", m.period);
    document.getElementById("month-summary").textContent =
      m.summary.map(([label, value]) => label + ": " + value).join(" · ");
    cells(document.querySelector("#table-month thead tr"), m.header, "th");
    document.querySelector("#table-month tbody").replaceChildren(
      ...m.rows.map(r => cells(document.createElement("tr"), r, "td")));
    document.getElementById("month-gaps").replaceChildren(...m.gaps.map(g => {
      const item = document.createElement("li");
      item.textContent = g;
      return item;
    }));
  }

  // One refresh at a time: the next starts 5 s after this one has ended.
  async function refresh() {
    try {
      const reply = await fetch(SOURCE, {credentials: "same-origin"});
      if (reply.redirected) {
        failed("signed out: reload the page to sign in again");
      } else if (!reply.ok) {
        failed("HTTP " + reply.status);
      } else {
        draw(await reply.json());
      }
    } catch (error) {
      failed(String(error.message || error));
    }
    setTimeout(refresh, REFRESH_MS);
  }
  refresh();
})();

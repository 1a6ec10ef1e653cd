// The analytics dashboard: polls the analytics API every 2 seconds with
// the key typed in (kept in sessionStorage only) and redraws in place.
"use strict";
(function () {
  const $ = (id) => document.getElementById(id);
  const SVG = "http://www.w3.org/2000/svg";
  let timer = null;

  function fmt(n) {
    if (n === null || n === undefined) return "–";
    if (typeof n !== "number") return String(n);
    if (Math.abs(n) >= 1e6) return (n / 1e6).toFixed(1) + "M";
    if (Math.abs(n) >= 1e4) return (n / 1e3).toFixed(1) + "k";
    return Number.isInteger(n) ? String(n) : n.toFixed(2);
  }

  function bars(svg, values, errors) {
    while (svg.firstChild) svg.removeChild(svg.firstChild);
    const max = Math.max(1, ...values);
    const w = 600 / Math.max(1, values.length);
    values.forEach((v, i) => {
      const h = (v / max) * 150;
      const r = document.createElementNS(SVG, "rect");
      r.setAttribute("class", "bar");
      r.setAttribute("x", String(i * w + 1));
      r.setAttribute("y", String(160 - h));
      r.setAttribute("width", String(Math.max(1, w - 2)));
      r.setAttribute("height", String(h));
      svg.appendChild(r);
      const e = errors ? errors[i] : 0;
      if (e > 0) {
        const eh = (e / max) * 150;
        const er = document.createElementNS(SVG, "rect");
        er.setAttribute("class", "err");
        er.setAttribute("x", String(i * w + 1));
        er.setAttribute("y", String(160 - eh));
        er.setAttribute("width", String(Math.max(1, w - 2)));
        er.setAttribute("height", String(eh));
        svg.appendChild(er);
      }
    });
    svg.setAttribute("data-points", String(values.length));
  }

  function table(el, rows, cols) {
    el.textContent = "";
    const head = document.createElement("tr");
    cols.forEach((c) => { const th = document.createElement("th"); th.textContent = c[1]; head.appendChild(th); });
    el.appendChild(head);
    rows.forEach((row) => {
      const tr = document.createElement("tr");
      cols.forEach((c) => { const td = document.createElement("td"); td.textContent = fmt(row[c[0]]); tr.appendChild(td); });
      el.appendChild(tr);
    });
  }

  async function get(path, key) {
    const res = await fetch(path, { headers: { "X-API-Key": key }, cache: "no-store" });
    const body = await res.json();
    if (!res.ok) throw new Error((body && body.message) || res.statusText);
    return body;
  }

  async function refresh() {
    const key = sessionStorage.getItem("syncstore.key");
    if (!key) return;
    const span = Number($("window").value);
    const now = Date.now();
    try {
      const [dash, live] = await Promise.all([
        get(`/api/v1/analytics/dashboard?from=${now - span}&to=${now + 1}`, key),
        get("/api/v1/analytics/realtime", key),
      ]);
      $("kpi-requests").textContent = fmt(dash.totals.requests);
      $("kpi-errors").textContent = (dash.totals.errorRate * 100).toFixed(2) + "%";
      $("kpi-p95").textContent = dash.latencyMs.p95 === null ? "–" : fmt(dash.latencyMs.p95) + " ms";
      $("kpi-sockets").textContent = fmt(live.connectedSockets);
      $("kpi-ops").textContent = fmt(live.opsPerSecond);
      $("kpi-users").textContent = `${dash.users.dau} / ${dash.users.wau} / ${dash.users.mau}`;
      $("kpi-conflicts").textContent = fmt(dash.conflicts.total);
      $("kpi-denials").textContent = fmt(dash.totals.denials);
      $("p50").textContent = fmt(dash.latencyMs.p50);
      $("p95").textContent = fmt(dash.latencyMs.p95);
      $("p99").textContent = fmt(dash.latencyMs.p99);
      bars($("chart-requests"), dash.series.map((p) => p.requests), dash.series.map((p) => p.errors));
      bars($("chart-ops"), live.opsPerSecondSeries);
      table($("denials"), dash.denials, [["code", "Reason"], ["count", "Count"]]);
      table($("routes"), dash.topRoutes, [["route", "Route"], ["requests", "Requests"], ["errors", "Errors"]]);
      $("updated").textContent = new Date().toLocaleTimeString();
      $("status").textContent = `${live.pods} pod(s)`;
      $("status").className = "";
    } catch (e) {
      $("status").textContent = e.message;
      $("status").className = "error";
    }
  }

  $("login").addEventListener("submit", (ev) => {
    ev.preventDefault();
    sessionStorage.setItem("syncstore.key", $("key").value.trim());
    $("key").value = "";
    refresh();
    if (timer) clearInterval(timer);
    timer = setInterval(refresh, 2000);
  });
  if (sessionStorage.getItem("syncstore.key")) {
    refresh();
    timer = setInterval(refresh, 2000);
  }
})();

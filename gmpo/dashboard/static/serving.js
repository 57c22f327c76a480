// gmpo dashboard: the serving panel (from `gmpo serve`'s request log, read-only on the server).
"use strict";
(function () {
  const { el, LineChart, PALETTE } = window.GD;
  const P = { charts: {}, body: null, data: null };
  window.__dash = window.__dash || {};

  const fmt = (v, d = 3) => (v === null || v === undefined || !Number.isFinite(v) ? "–" : Number(v).toPrecision(d));
  const ms = (s) => (s === null || s === undefined ? "–" : (s * 1000).toFixed(0) + " ms");

  const DEFS = [
    { id: "serve_rps", title: "Requests / s per arm", help: "Requests per second in each time bucket, per A/B arm (or model), and errors/s (HTTP status ≥ 400 or finish_reason 'error').", time: true },
    { id: "serve_latency", title: "Latency distribution (end to end)", help: "Histogram of latency_s (arrival to last token) of the newest requests, per arm; p50 / p90 / p99 in the table.", stepped: true, xLabel: "latency (s)" },
    { id: "serve_ttft", title: "Time to first token", help: "Histogram of ttft_s of the newest requests, per arm.", stepped: true, xLabel: "TTFT (s)" },
    { id: "serve_quality", title: "Quality per arm (circuit-breaker events marked)", help: "Mean quality score (0..1) per time bucket and arm; red marks: a breaker opened, green: it closed.", time: true, yRange: [0, 1] },
    { id: "serve_fallback", title: "Fallback rate", help: "Share of requests answered by the fallback model, per time bucket.", time: true, yRange: [0, 1] },
  ];

  function init(body) {
    P.body = body;
    const cards = el("div", { class: "serve-cards", id: "serve-cards" });
    const grid = el("div", { class: "grid", id: "serve-charts" });
    body.append(cards, grid);
    for (const d of DEFS) {
      P.charts[d.id] = new LineChart(grid, d, { time: d.time, stepped: d.stepped, xLabel: d.xLabel, noZoom: true, yRange: d.yRange,
                                                 emptyText: "no requests in the log yet" });
    }
    window.__dash.serveCharts = P.charts;
    body.append(el("h3", {}, "Arms"), el("div", { class: "table-wrap" }, undefined));
    body.lastChild.appendChild(el("table", { id: "serve-arms" }));
    body.append(el("h3", {}, "Alerts and events"), el("div", { class: "table-wrap" }));
    body.lastChild.appendChild(el("table", { id: "serve-events" }));
    body.append(el("h3", {}, "Newest requests"), el("div", { class: "table-wrap" }));
    body.lastChild.appendChild(el("table", { id: "serve-recent" }));
  }

  function card(label, value, sub, tip) {
    const c = el("div", { class: "card", title: tip });
    c.append(el("div", { class: "label" }, label), el("div", { class: "value" }, value), el("div", { class: "sub" }, sub || ""));
    return c;
  }

  function table(id, head, rows) {
    const t = document.getElementById(id);
    t.textContent = "";
    const tr = el("tr");
    for (const h of head) tr.appendChild(el("th", {}, h));
    t.appendChild(tr);
    for (const r of rows) {
      const row = el("tr");
      for (const c of r) row.appendChild(c instanceof Node ? c : el("td", {}, c === null || c === undefined ? "–" : String(c)));
      t.appendChild(row);
    }
  }

  function render(d) {
    P.data = d;
    const cards = document.getElementById("serve-cards");
    cards.textContent = "";
    const h = d.headline || {};
    const tl = d.timeline, lat = d.latency;
    const errRate = tl ? tl.errors_per_s.reduce((a, b) => a + (b || 0), 0) / Math.max(1e-9, tl.rps_total.reduce((a, b) => a + (b || 0), 0)) : null;
    const fb = tl ? tl.fallback_rate.filter((v) => v !== null) : [];
    cards.append(
      card("Requests", String(d.requests), d.t0 ? `${new Date(d.t0 * 1000).toLocaleString()} – ${new Date(d.t1 * 1000).toLocaleTimeString()}` : "", "Rows in the request log."),
      card("Mean latency (5 min)", ms(h.mean_latency_s), `${h.requests || 0} requests`, "Mean end-to-end latency over the last 5 minutes of the log."),
      card("Throughput (5 min)", fmt(h.requests_per_s) + " req/s", fmt(h.completion_tokens_per_s) + " completion tok/s", "Requests and completion tokens per second over the last 5 minutes of the log."),
      card("Error rate", errRate === null ? "–" : (errRate * 100).toFixed(1) + "%", "HTTP ≥ 400 or finish 'error'", "Share of all logged requests that failed."),
      card("Fallback rate (latest)", fb.length ? (fb[fb.length - 1] * 100).toFixed(1) + "%" : "–", "share answered by the fallback model", "Fallback share of the newest time bucket."));
    const arms = d.arms || [];
    const color = (i) => PALETTE[i % PALETTE.length];
    const bmarks = [], open = [];  // breaker events, and the periods each arm's breaker stayed open
    for (const [arm, b] of Object.entries(d.breakers || {})) {
      let since = null;
      for (const e of b.events) {
        bmarks.push({ x: e.ts, cls: e.kind, text: `${arm}: ${e.kind.replace("_", " ")}${e.message ? " · " + e.message : ""}` });
        if (e.kind === "breaker_open" && since === null) since = e.ts;
        if (e.kind === "breaker_close" && since !== null) { open.push({ x0: since, x1: e.ts, cls: "open", text: `${arm}: breaker open` }); since = null; }
      }
      if (since !== null) open.push({ x0: since, x1: Math.max(d.t1 || since, since), cls: "open", text: `${arm}: breaker open (still)` });
    }
    if (tl) {
      P.charts.serve_rps.update(tl.x, arms.map((a, i) => ({ label: a, color: color(i), data: tl.rps[a] }))
        .concat([{ label: "errors/s", color: "#dc2626", dash: [4, 3], data: tl.errors_per_s }]), [], `bucket ${tl.bucket_s.toFixed(1)} s`, []);
      P.charts.serve_quality.update(tl.x, arms.map((a, i) => ({ label: a, color: color(i), data: tl.quality[a], points: true })), [],
        open.length ? "shaded: a breaker was open" : "", bmarks, open);
      P.charts.serve_fallback.update(tl.x, [{ label: "fallback rate", color: "#7c3aed", data: tl.fallback_rate }], [], "", []);
    }
    for (const [key, id] of [["latency", "serve_latency"], ["ttft", "serve_ttft"]]) {
      const hist = lat && lat[key];
      if (!hist) { P.charts[id].empty("no " + key + " values logged"); continue; }
      const edges = hist.edges, x = edges.slice(0, -1);
      const series = arms.filter((a) => hist.arms[a]).map((a) => ({ label: a + " (requests)", color: color(arms.indexOf(a)), data: hist.arms[a].counts, fill: color(arms.indexOf(a)) + "33" }));
      P.charts[id].update(x, series, [], `${lat.rows} newest requests, ${edges.length - 1} bins of ${(edges[1] * 1000).toFixed(0)} ms`, []);
    }
    table("serve-arms", ["arm / model", "requests", "latency p50", "p90", "p99", "mean", "ttft p50", "breaker"],
      arms.map((a) => {
        const L = lat && lat.latency && lat.latency.arms[a], T = lat && lat.ttft && lat.ttft.arms[a];
        const b = (d.breakers || {})[a];
        const st = el("td", { class: b ? "state-" + b.state : "muted" }, b ? b.state : "no events");
        return [a, L ? L.n : "–", L ? ms(L.p50) : "–", L ? ms(L.p90) : "–", L ? ms(L.p99) : "–", L ? ms(L.mean) : "–", T ? ms(T.p50) : "–", st];
      }));
    table("serve-events", ["time", "kind", "arm", "model", "message"],
      (d.events || []).map((e) => [new Date(e.ts * 1000).toLocaleTimeString(), e.kind, e.arm, e.model, e.message]));
    table("serve-recent", ["time", "arm", "status", "latency", "quality", "fallback", "prompt", "completion"],
      (d.recent || []).map((r) => [new Date(r.ts * 1000).toLocaleTimeString(), r.arm, r.status, ms(r.latency_s), fmt(r.quality),
        r.fallback ? "yes" : "no", r.prompt, r.completion]));
  }

  async function refresh() {
    const r = await fetch("/api/serve", { cache: "no-store" });
    if (!r.ok) throw new Error("/api/serve: HTTP " + r.status + " " + await r.text());
    render(await r.json());
  }

  window.GDServe = { init, refresh };
})();

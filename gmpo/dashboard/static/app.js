// gmpo dashboard: page state, data fetching (same origin only), live updates over Server-Sent Events.
"use strict";
(function () {
  const { el, LineChart, HeatMap, PALETTE, DASHES } = window.GD;
  // window.__dash: what the page shows, for people poking in the console and for the browser tests
  const D = window.__dash = { charts: {}, heat: {}, firstPaintMs: null, refreshes: 0, version: null, meta: null };
  const PAGE = 25;  // samples per page
  const COMPARE_EVERY_MS = 5000;  // the comparison table refreshes at most this often
  const S = { selected: new Set(), xwin: null, busy: false, again: false, lastRefresh: 0, samplesOffset: 0, lastCompare: -1e9 };

  async function api(path) {
    const r = await fetch(path, { cache: "no-store" });
    if (!r.ok) throw new Error(`${path}: HTTP ${r.status} ${await r.text()}`);
    return r.json();
  }
  const fmt = (v, d = 3) => (v === null || v === undefined || !Number.isFinite(v) ? "–" : Number(v).toPrecision(d));
  const runColor = (id) => PALETTE[id % PALETTE.length];
  const runName = (id) => D.meta.runs[id].name;
  const selectedIds = () => D.meta.runs.map((r) => r.id).filter((id) => S.selected.has(id));
  const qs = (o) => Object.entries(o).filter(([, v]) => v !== null && v !== undefined && v !== "")
    .map(([k, v]) => `${k}=${encodeURIComponent(v)}`).join("&");

  function buildRunsBar() {
    const list = document.getElementById("run-list");
    for (const r of D.meta.runs) {
      S.selected.add(r.id);
      const cb = el("input", { type: "checkbox", "data-run": String(r.id) });
      cb.checked = true;
      cb.addEventListener("change", () => { cb.checked ? S.selected.add(r.id) : S.selected.delete(r.id); refresh(true); });
      const sw = el("span", { class: "swatch" }); sw.style.background = runColor(r.id);
      const label = el("label", { title: r.path });
      label.append(cb, sw, document.createTextNode(`${r.name}${r.algo ? " · " + r.algo : ""}${r.seed !== null && r.seed !== undefined ? " · seed " + r.seed : ""}`));
      const last = el("span", { class: "muted", "data-last": String(r.id) });
      label.appendChild(last);
      list.appendChild(label);
    }
    if (!D.meta.runs.length) list.appendChild(el("span", { class: "muted" }, "no run directories given"));
    document.getElementById("reset-zoom").addEventListener("click", resetZoom);
  }

  function zoom(a, b) { S.xwin = [Math.floor(a), Math.ceil(b)]; refresh(true); }
  function resetZoom() { S.xwin = null; refresh(true); }

  function buildCharts() {
    const grid = document.getElementById("charts");
    for (const def of D.meta.charts) {
      D.charts[def.id] = new LineChart(grid, def, {
        onZoom: zoom, onReset: resetZoom, yRange: def.id === "accuracy" ? [0, 1] : null,
        emptyText: "no " + def.metrics.join(", ") + " in the selected runs yet",
      });
    }
    const hm = document.getElementById("heatmaps");
    for (const r of D.meta.runs) D.heat[r.id] = new HeatMap(hm, r, runColor(r.id));
    window.addEventListener("resize", () => {
      for (const c of Object.values(D.charts)) c.resize();
      for (const h of Object.values(D.heat)) h.draw();
    });
  }

  function guardMarks(alerts) {
    return alerts.map((a) => ({
      x: a.step, cls: a.action || "warn",
      text: `${runName(a.run)} · step ${a.step} · ${a.detector} → ${a.action}: ${a.message || ""}`,
    }));
  }

  function renderChart(c, payload, marks) {
    const series = [], bands = [];
    const multi = selectedIds().length > 1;
    const metrics = c.def.metrics;
    const seen = metrics.slice();  // metrics beyond the chart's own (eval/<benchmark>) get the next colours
    for (const s of payload.series) { const m = s.metric.split(":")[0]; if (!seen.includes(m)) seen.push(m); }
    const short = (m) => (seen.length === 1 ? "" : (m.split("/").slice(1).join("/") || m));
    payload.series.forEach((s) => {
      const metric = s.metric.split(":")[0], mi = seen.indexOf(metric);
      const color = multi ? runColor(s.run) : PALETTE[(mi + (seen.length === 1 ? s.run : 0)) % PALETTE.length];
      const base = multi ? (runName(s.run) + " " + short(metric)).trim() : metric;
      if (s.role === "line") {
        series.push({ label: base, color, dash: multi ? DASHES[mi % DASHES.length] : [], data: s.data, points: c.def.id === "accuracy" && payload.x.length <= 80 });
      } else {
        series.push({ label: `${multi ? runName(s.run) + " " : ""}95% ${s.role === "lo" ? "low" : "high"}`, color: color + "66", width: 0.8, data: s.data });
      }
    });
    if (c.def.id === "accuracy") {  // band between each run's high and low series
      for (let i = 0; i < payload.series.length; i++) {
        const s = payload.series[i];
        if (s.role !== "hi") continue;
        const lo = payload.series.findIndex((t) => t.run === s.run && t.role === "lo");
        if (lo >= 0) bands.push([i + 1, lo + 1, runColor(s.run) + "22"]);
      }
    }
    const note = payload.bucket ? `${payload.x.length} points: min/max per ${payload.bucket.toFixed(1)} steps` : "";
    c.update(payload.x, series, bands, note, marks);
  }

  function renderGuardList(alerts) {
    const box = document.getElementById("guard-list");
    box.textContent = "";
    if (!alerts.length) { box.appendChild(el("div", { class: "none" }, "no guard events in the selected runs")); return; }
    for (const a of alerts.slice(-300).reverse()) {
      const row = el("div", { "data-action": a.action || "" });
      row.append(el("span", { class: "key " + (a.action || "warn") }, a.action || "?"),
        document.createTextNode(` ${runName(a.run)} · step ${a.step} · ${a.detector}: ${a.message || ""}`));
      box.appendChild(row);
    }
  }

  async function refreshTraining() {
    const ids = selectedIds();
    const width = Object.values(D.charts)[0].width();
    const win = S.xwin ? { x0: S.xwin[0], x1: S.xwin[1] } : {};
    const t0 = performance.now();
    const [charts, heat] = await Promise.all([
      ids.length ? api("/api/charts?" + qs({ runs: ids.join(","), points: Math.round(width), ...win })) : null,
      ids.length ? api("/api/heatmap?" + qs({ runs: ids.join(","), cols: Math.round(width), ...win })) : null,
    ]);
    const t1 = performance.now();
    const alerts = charts ? charts.alerts : [];
    const marks = guardMarks(alerts);
    for (const [id, c] of Object.entries(D.charts)) {
      if (charts) renderChart(c, charts.charts[id], marks); else c.empty("no run selected");
    }
    for (const [id, h] of Object.entries(D.heat)) {
      const p = heat && heat.runs.find((r) => String(r.run) === id);
      h.el.hidden = !p;
      if (p) h.update(p, marks.filter((m, i) => String(alerts[i].run) === id));
    }
    renderGuardList(alerts);
    document.getElementById("window-label").textContent = S.xwin ? `steps ${S.xwin[0]}–${S.xwin[1]}` : "all steps";
    D.timing = { fetchMs: t1 - t0, renderMs: performance.now() - t1 };  // the last refresh: network vs drawing
  }

  async function refreshHeadline() {
    const first = selectedIds()[0];
    const h = await api("/api/headline?" + qs({ run: first === undefined ? 0 : first }));
    const set = (id, value, sub, cls) => {
      const card = document.getElementById(id);
      card.querySelector(".value").textContent = value;
      const s = card.querySelector(".sub"); s.textContent = sub || ""; s.className = "sub " + (cls || "");
    };
    const t = h.training || {};
    if (t.accuracy) {
      const a = t.accuracy, ch = a.change;
      const ci = a.ci ? ` · 95% CI ${(a.ci[0] * 100).toFixed(1)}–${(a.ci[1] * 100).toFixed(1)}%` : "";
      set("card-accuracy", (a.value * 100).toFixed(1) + "%",
        (ch === null ? "first eval" : `${ch >= 0 ? "▲ +" : "▼ "}${(ch * 100).toFixed(1)} pts since step ${a.prev_step}`) + ` · step ${a.step}${ci}`,
        ch === null ? "" : (ch >= 0 ? "up" : "down"));
    } else set("card-accuracy", "–", "no held-out eval yet");
    if (t.stability) set("card-stability", t.stability.score.toFixed(0), `${t.stability.clean}/${t.stability.window} recent steps without a guard event`);
    else set("card-stability", "–", "no steps yet");
    const sv = h.serve;
    if (sv && sv.mean_latency_s !== null && sv.mean_latency_s !== undefined) {
      set("card-latency", (sv.mean_latency_s * 1000).toFixed(0) + " ms", `${sv.requests} requests in the last ${sv.window_s / 60} min`);
    } else set("card-latency", "–", D.meta.serve ? "no requests logged yet" : "no request log (--serve-db)");
    const tp = t.throughput;
    const serveTp = sv ? ` · serving ${fmt(sv.requests_per_s)} req/s, ${fmt(sv.completion_tokens_per_s)} tok/s` : "";
    set("card-throughput", tp ? fmt(tp.tokens_per_s) + " tok/s" : "–",
      (tp ? `training, mean of the last ${tp.window} steps` : "no training steps yet") + serveTp);
  }

  async function refreshCompare() {
    const c = await api("/api/compare");
    const t = document.getElementById("compare-table");
    t.textContent = "";
    const head = el("tr");
    head.append(el("th", {}, "algorithm"), el("th", {}, "seeds"));
    for (const col of c.columns) head.appendChild(el("th", {}, col.header));
    t.appendChild(head);
    for (const r of c.rows) {
      const tr = el("tr", { "data-algo": r.algo });
      tr.append(el("td", {}, r.algo), el("td", { class: "num" }, String(r.seeds.length)));
      for (const col of c.columns) tr.appendChild(el("td", { class: "num" }, r.cells[col.key]));
      t.appendChild(tr);
    }
    const rt = document.getElementById("compare-runs");
    rt.textContent = "";
    const h2 = el("tr");
    h2.append(el("th", {}, "run"), el("th", {}, "algorithm"), el("th", {}, "seed"), el("th", {}, "steps"));
    for (const col of c.columns) h2.appendChild(el("th", {}, col.header));
    rt.appendChild(h2);
    for (const r of c.runs) {
      const tr = el("tr");
      tr.append(el("td", {}, r.name), el("td", {}, r.algo), el("td", { class: "num" }, String(r.seed)),
        el("td", { class: "num" }, String(Math.round(r.stats.steps))));
      for (const col of c.columns) tr.appendChild(el("td", { class: "num" }, fmt(r.stats[col.key])));
      rt.appendChild(tr);
    }
  }

  // -- sample browser -----------------------------------------------------------------------------
  function initSamples() {
    const form = document.getElementById("sample-filter");
    const sel = form.elements.run;
    for (const r of D.meta.runs) sel.appendChild(el("option", { value: String(r.id) }, r.name));
    form.addEventListener("submit", (e) => { e.preventDefault(); S.samplesOffset = 0; refreshSamples(); });
    sel.addEventListener("change", () => { S.samplesOffset = 0; refreshSamples(); });
    document.getElementById("sample-clear").addEventListener("click", () => {
      for (const n of ["step_min", "step_max", "reward_min", "reward_max", "text"]) form.elements[n].value = "";
      S.samplesOffset = 0; refreshSamples();
    });
    document.getElementById("sample-prev").addEventListener("click", () => { S.samplesOffset = Math.max(0, S.samplesOffset - PAGE); refreshSamples(); });
    document.getElementById("sample-next").addEventListener("click", () => { S.samplesOffset += PAGE; refreshSamples(); });
  }

  async function refreshSamples() {
    if (!D.meta.runs.length) return;
    const f = document.getElementById("sample-filter").elements;
    const q = { run: f.run.value, step_min: f.step_min.value, step_max: f.step_max.value, reward_min: f.reward_min.value,
                reward_max: f.reward_max.value, text: f.text.value, limit: PAGE, offset: S.samplesOffset };
    const p = await api("/api/samples?" + qs(q));
    const kept = p.kept < p.seen ? ` (the newest ${p.kept} of ${p.seen} are kept in memory: steps ${p.kept_steps[0]}–${p.kept_steps[1]})` : "";
    const cnt = document.getElementById("sample-count");
    cnt.textContent = `${p.total} matching samples${kept}; showing ${p.total ? p.offset + 1 : 0}–${p.offset + p.samples.length}, newest first`;
    cnt.dataset.total = String(p.total);
    const t = document.getElementById("sample-table");
    t.textContent = "";
    const head = el("tr");
    for (const h of ["step", "reward", "advantage", "length", "prompt", "completion", "answer"]) head.appendChild(el("th", {}, h));
    t.appendChild(head);
    for (const s of p.samples) {
      const tr = el("tr", { class: "sample", "data-step": String(s.step), "data-reward": String(s.reward) });
      const rewards = s.rewards ? Object.entries(s.rewards).map(([k, v]) => `${k}: ${fmt(v)}`).join("\n") : "";
      tr.append(el("td", { class: "num" }, String(s.step)), el("td", { class: "num", title: rewards }, fmt(s.reward)),
        el("td", { class: "num" }, fmt(s.advantage)), el("td", { class: "num" }, `${s.length ?? "–"}${s.truncated ? " (cut)" : ""}`));
      for (const k of ["prompt", "completion", "answer"]) { const td = el("td"); td.appendChild(el("pre", {}, s[k] ?? "")); tr.appendChild(td); }
      t.appendChild(tr);
    }
  }

  // -- refresh loop -------------------------------------------------------------------------------
  async function refresh(force) {
    if (S.busy) { S.again = true; return; }
    const wait = 1000 - (performance.now() - S.lastRefresh);  // at most one refresh a second
    if (!force && wait > 0) { S.again = true; setTimeout(() => { if (S.again && !S.busy) { S.again = false; refresh(true); } }, wait); return; }
    S.busy = true; S.again = false; S.lastRefresh = performance.now();
    try {
      await Promise.all([refreshTraining(), refreshHeadline()]);  // what is on screen first
      if (D.firstPaintMs === null) {
        D.firstPaintMs = performance.now();
        document.body.dataset.painted = "1";
      }
      const jobs = [];
      const since = performance.now() - S.lastCompare;
      if (since > COMPARE_EVERY_MS) {  // the table costs more on long runs
        S.lastCompare = performance.now();
        jobs.push(refreshCompare());
      } else if (!S.compareLater) {  // catch up once the interval has passed
        S.compareLater = setTimeout(() => { S.compareLater = null; refresh(false); }, COMPARE_EVERY_MS - since + 50);
      }
      if (S.samplesOffset === 0) jobs.push(refreshSamples());
      if (D.meta.serve) jobs.push(window.GDServe.refresh());
      await Promise.all(jobs);
      D.refreshes += 1;
    } catch (e) {
      console.warn("dashboard refresh failed:", e.message);
      document.getElementById("live").textContent = "refresh failed: " + e.message;
    } finally {
      S.busy = false;
      if (S.again) setTimeout(() => refresh(false), 50);
    }
  }

  function connect() {
    const live = document.getElementById("live");
    const src = new EventSource("/api/stream");
    src.addEventListener("update", (e) => {
      const st = JSON.parse(e.data);
      const seen = D.version === st.version;
      D.version = st.version;
      const last = st.runs.map((r) => r.last_step).filter((s) => s !== null);
      live.className = "live on";
      live.textContent = "live" + (last.length ? " · step " + Math.max(...last) : "");
      for (const r of st.runs) {
        const span = document.querySelector(`[data-last="${r.id}"]`);
        if (span) span.textContent = r.last_step === null ? " (no steps yet)" : ` (step ${r.last_step})`;
      }
      if (!seen) refresh(false);
    });
    src.onerror = () => { live.className = "live off"; live.textContent = "reconnecting…"; };
  }

  async function init() {
    const embedded = document.getElementById("gd-meta");  // inert JSON the server put in the page
    D.meta = embedded ? JSON.parse(embedded.textContent) : await api("/api/meta");
    D.version = D.meta.status.version;
    buildRunsBar();
    buildCharts();
    initSamples();
    if (!D.meta.runs.length) {  // serving only: no training sections
      for (const id of ["runs-bar", "training", "heatmap", "compare", "samples"]) document.getElementById(id).hidden = true;
      for (const a of document.querySelectorAll("nav a")) a.hidden = a.getAttribute("href") !== "#serving";
    }
    if (D.meta.serve) window.GDServe.init(document.getElementById("serve-body"));
    else document.getElementById("serve-body").appendChild(el("p", { class: "hint" },
      "No request log: start the dashboard with --serve-db PATH (the --log-db of `gmpo serve`) to see the serving fleet."));
    await refresh(true);
    D.readyMs = performance.now();
    document.body.dataset.ready = "1";
    connect();
  }

  init().catch((e) => { document.getElementById("live").textContent = "failed to load: " + e.message; throw e; });
})();

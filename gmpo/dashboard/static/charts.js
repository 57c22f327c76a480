// gmpo dashboard: chart widgets. LineChart wraps uPlot (vendored, MIT) with DOM annotation marks;
// HeatMap draws the per-step token log-ratio histogram on a canvas. No network access here.
"use strict";
(function () {
  const PALETTE = ["#2563eb", "#dc2626", "#059669", "#d97706", "#7c3aed", "#0891b2", "#db2777", "#65a30d",
                   "#4b5563", "#ea580c"];
  const DASHES = [[], [6, 4], [2, 3], [10, 3, 2, 3]];
  const SEVERITY = { warn: 1, skip: 2, rollback: 3, stop: 4, breaker_close: 1, breaker_open: 2 };
  const tip = () => document.getElementById("tooltip");

  function el(tag, attrs, text) {
    const e = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (k === "class") e.className = v; else if (k === "dataset") Object.assign(e.dataset, v); else e.setAttribute(k, v);
    }
    if (text !== undefined) e.textContent = text;
    return e;
  }

  function showTip(evt, text) {
    const t = tip();
    t.textContent = text;
    t.hidden = false;
    t.style.left = Math.min(evt.clientX + 12, window.innerWidth - 370) + "px";
    t.style.top = (evt.clientY + 12) + "px";
  }
  function hideTip() { tip().hidden = true; }

  // Annotation marks (guard events, breaker events) as DOM elements over a plot area: one per pixel column,
  // the most severe event wins; each has a flag with the messages as its tooltip.
  function placeMarks(layer, marks, toPx, width) {
    layer.textContent = "";
    const byPx = new Map();
    for (const m of marks || []) {
      const px = Math.round(toPx(m.x));
      if (!Number.isFinite(px) || px < 0 || px > width) continue;
      const cur = byPx.get(px);
      if (!cur) byPx.set(px, { ...m, lines: [m.text] });
      else {
        if (cur.lines.length < 6) cur.lines.push(m.text); else if (cur.lines.length === 6) cur.lines.push("…");
        if ((SEVERITY[m.cls] || 0) > (SEVERITY[cur.cls] || 0)) cur.cls = m.cls;
      }
    }
    for (const [px, m] of byPx) {
      const mark = el("div", { class: "guard-mark " + m.cls, dataset: { x: String(m.x), action: m.cls } });
      mark.style.left = px + "px";
      const flag = el("div", { class: "flag" });
      const text = m.lines.join("\n");
      flag.addEventListener("mousemove", (e) => showTip(e, text));
      flag.addEventListener("mouseleave", hideTip);
      mark.dataset.text = text;
      mark.appendChild(flag);
      layer.appendChild(mark);
    }
    return byPx.size;
  }

  // Shaded x intervals (e.g. a circuit breaker's open periods) under the marks: [{x0, x1, cls, text}].
  function placeRegions(layer, regions, toPx, width) {
    for (const r of regions || []) {
      const a = Math.max(0, toPx(r.x0)), b = Math.min(width, toPx(r.x1));
      if (!(b > a)) continue;
      const div = el("div", { class: "region " + (r.cls || ""), title: r.text || "" });
      div.style.left = a + "px"; div.style.width = (b - a) + "px";
      layer.insertBefore(div, layer.firstChild);
    }
  }

  class LineChart {
    // def: {id, title, help, log_y}; opts: {time, stepped, xLabel, yRange, height, noZoom, onZoom, onReset, emptyText}
    constructor(parent, def, opts) {
      this.def = def; this.opts = opts || {};
      this.el = el("div", { class: "chart", dataset: { chart: def.id } });
      const h = el("h4", { title: def.help || "" }, def.title);
      this.body = el("div", { class: "body" });
      this.note = el("div", { class: "note" });
      this.el.append(h, this.body, this.note);
      parent.appendChild(this.el);
      this.u = null; this.sig = ""; this.marks = []; this.nMarks = 0;
    }
    width() { return Math.max(240, this.el.clientWidth - 18); }
    destroy() { if (this.u) { this.u.destroy(); this.u = null; } this.sig = ""; }
    empty(text) {
      this.destroy();
      this.body.textContent = "";
      this.body.appendChild(el("div", { class: "empty" }, text));
      this.note.textContent = "";
    }
    // x: [..]; series: [{label, color, dash, width, data, points, fillTo}]; bands: [[hiIdx, loIdx, fill]]
    update(x, series, bands, note, marks, regions) {
      this.marks = marks || []; this.regions = regions || [];
      if (!series.length || !x.length) { this.empty(this.opts.emptyText || "no data yet"); return; }
      const logY = !!this.def.log_y;
      const data = [x, ...series.map((s) => logY ? s.data.map((v) => (v > 0 ? v : null)) : s.data)];
      const sig = series.map((s) => s.label + "|" + s.color).join(";") + JSON.stringify(bands || []);
      this.note.textContent = note || "";
      if (sig === this.sig && this.u) {
        this.u.setData(data, true);
        return;
      }
      this.destroy();
      this.body.textContent = "";
      this.sig = sig;
      const self = this;
      const opt = {
        width: this.width(), height: this.opts.height || 190,
        cursor: { drag: { x: !this.opts.noZoom, y: false, setScale: false }, sync: this.opts.noZoom ? undefined : { key: "steps" } },
        scales: { x: { time: !!this.opts.time }, y: logY ? { distr: 3 } : (this.opts.yRange ? { range: this.opts.yRange } : {}) },
        axes: [{ stroke: "#6b7280", grid: { stroke: "#f1f5f9" } }, { stroke: "#6b7280", size: 56, grid: { stroke: "#f1f5f9" } }],
        legend: { live: true },
        series: [{ label: this.opts.xLabel || (this.opts.time ? "time" : "step") }].concat(series.map((s) => ({
          label: s.label, stroke: s.color, width: s.width === undefined ? 1.5 : s.width, dash: s.dash || [],
          points: { show: !!s.points, size: 5 }, spanGaps: !s.points, fill: s.fill,
          paths: this.opts.stepped ? uPlot.paths.stepped({ align: 1 }) : undefined,
        }))),
        bands: (bands || []).map(([hi, lo, fill]) => ({ series: [hi, lo], fill })),
        hooks: {
          draw: [(u) => {
            const layer = self.layer(u), toPx = (v) => u.valToPos(v, "x");
            self.nMarks = placeMarks(layer, self.marks, toPx, u.over.clientWidth);
            placeRegions(layer, self.regions, toPx, u.over.clientWidth);
          }],
          setSelect: [(u) => {
            if (u.select.width < 3 || !self.opts.onZoom) return;
            const a = u.posToVal(u.select.left, "x"), b = u.posToVal(u.select.left + u.select.width, "x");
            u.setSelect({ left: 0, width: 0, top: 0, height: 0 }, false);
            self.opts.onZoom(a, b);
          }],
          ready: [(u) => u.over.addEventListener("dblclick", () => self.opts.onReset && self.opts.onReset())],
        },
      };
      this.u = new uPlot(opt, data, this.body);
    }
    layer(u) {
      let layer = u.over.querySelector(":scope > .marks");
      if (!layer) { layer = el("div", { class: "marks" }); u.over.appendChild(layer); }
      return layer;
    }
    setMarks(marks) { this.marks = marks || []; if (this.u) this.u.redraw(false, false); }
    resize() { if (this.u) this.u.setSize({ width: this.width(), height: this.opts.height || 190 }); }
    points() { return this.u ? this.u.data[0].length : 0; }
  }

  // -- heat-map ------------------------------------------------------------------------------------
  const VIRIDIS = [[68, 1, 84], [59, 82, 139], [33, 145, 140], [94, 201, 98], [253, 231, 37]];
  function viridisRGB(t) {
    t = Math.max(0, Math.min(1, t)) * (VIRIDIS.length - 1);
    const i = Math.min(Math.floor(t), VIRIDIS.length - 2), f = t - i, a = VIRIDIS[i], b = VIRIDIS[i + 1];
    return [0, 1, 2].map((c) => Math.round(a[c] + f * (b[c] - a[c])));
  }
  const LUT = Array.from({ length: 256 }, (_, i) => viridisRGB(i / 255));  // colour of each level
  const viridis = (t) => { const c = viridisRGB(t); return `rgb(${c[0]},${c[1]},${c[2]})`; };

  class HeatMap {
    constructor(parent, run, color) {
      this.run = run;
      this.el = el("div", { class: "heat", dataset: { run: String(run.id) } });
      const title = el("h4");
      const sw = el("span", { class: "swatch" }); sw.style.background = color;
      title.append(sw, document.createTextNode(" " + run.name + (run.algo ? " · " + run.algo : "")));
      this.note = el("div", { class: "hint" });
      this.wrap = el("div", { class: "canvas-wrap" });
      this.canvas = el("canvas");
      this.layerEl = el("div", { class: "marks" });
      this.wrap.append(this.canvas, this.layerEl);
      this.legend = el("div", { class: "legend-bar" });
      this.el.append(title, this.note, this.wrap, this.legend);
      parent.appendChild(this.el);
      this.cols = 0; this.data = null; this.marks = [];
      this.canvas.addEventListener("mousemove", (e) => this.hover(e));
      this.canvas.addEventListener("mouseleave", hideTip);
    }
    geometry() {
      const W = Math.max(300, this.wrap.clientWidth || 600), H = 260;
      return { W, H, L: 46, R: 8, T: 6, B: 22, gap: 3 };
    }
    update(payload, marks) {
      this.data = payload; this.marks = marks || [];
      this.el.dataset.hasHist = payload.has_hist ? "1" : "0";
      if (!payload.has_hist) {
        this.cols = 0;
        this.wrap.hidden = true; this.legend.hidden = true;
        this.note.textContent = "";
        let m = this.el.querySelector(".missing");
        if (!m) { m = el("div", { class: "missing" }); this.el.appendChild(m); }
        m.textContent = "No ratio/log_hist in this run's metrics.jsonl (runs written before the metric existed, or a " +
          "backend that does not record it): the heat-map needs it. The token-ratio chart above still shows min/p01/p99/max.";
        return;
      }
      const m = this.el.querySelector(".missing"); if (m) m.remove();
      this.wrap.hidden = false; this.legend.hidden = false;
      this.cols = payload.z.length;
      this.el.dataset.cols = String(this.cols);
      const clip = payload.clip || {};
      this.note.textContent = (clip.note || "") + (payload.bucket ? ` · ${this.cols} columns of ${payload.bucket.toFixed(1)} steps` : ` · ${this.cols} steps`);
      this.draw();
    }
    draw() {
      const p = this.data; if (!p || !p.has_hist) return;
      const g = this.geometry(), dpr = window.devicePixelRatio || 1;
      this.canvas.width = g.W * dpr; this.canvas.height = g.H * dpr; this.canvas.style.height = g.H + "px";
      const ctx = this.canvas.getContext("2d");
      ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
      ctx.clearRect(0, 0, g.W, g.H);
      const pw = g.W - g.L - g.R, ph = g.H - g.T - g.B, nb = p.edges.bins + 2;
      const rowH = (ph - 2 * g.gap) / nb, colW = pw / Math.max(1, this.cols);
      let zmax = 0;
      for (const col of p.z) for (const v of col) if (v > zmax) zmax = v;
      zmax = zmax || 1;
      const rowY = (r) => { // r = 0 underflow (bottom) .. nb-1 overflow (top)
        const gaps = r === 0 ? 0 : (r === nb - 1 ? 2 * g.gap : g.gap);
        return g.T + ph - (r + 1) * rowH - gaps;
      };
      // one pixel per cell in an offscreen image (row 0 = overflow at the top), scaled up without smoothing
      const img = new ImageData(this.cols, nb);
      for (let i = 0; i < this.cols; i++) {
        const col = p.z[i];
        for (let r = 0; r < nb; r++) {
          const c = LUT[Math.round(255 * Math.sqrt(col[r] / zmax))], o = ((nb - 1 - r) * this.cols + i) * 4;
          img.data[o] = c[0]; img.data[o + 1] = c[1]; img.data[o + 2] = c[2]; img.data[o + 3] = 255;
        }
      }
      const off = document.createElement("canvas");
      off.width = this.cols; off.height = nb;
      off.getContext("2d").putImageData(img, 0, 0);
      ctx.imageSmoothingEnabled = false;
      ctx.drawImage(off, 0, 0, this.cols, 1, g.L, rowY(nb - 1), pw, rowH);  // overflow, l > hi
      ctx.drawImage(off, 0, 1, this.cols, nb - 2, g.L, rowY(nb - 2), pw, (nb - 2) * rowH);  // the 40 bins
      ctx.drawImage(off, 0, nb - 1, this.cols, 1, g.L, rowY(0), pw, rowH);  // underflow, l <= lo
      const lo = p.edges.lo, hi = p.edges.hi;
      const yOf = (l) => rowY(1) + rowH - (l - lo) / (hi - lo) * (nb - 2) * rowH;
      ctx.fillStyle = "#6b7280"; ctx.font = "11px system-ui, sans-serif"; ctx.textAlign = "right"; ctx.textBaseline = "middle";
      for (const t of [-0.5, 0, 0.5]) ctx.fillText(String(t), g.L - 4, yOf(t));
      ctx.fillText("≤" + lo, g.L - 4, rowY(0) + rowH / 2 + 2);
      ctx.fillText(">" + hi, g.L - 4, rowY(nb - 1) + rowH / 2 - 2);
      ctx.textAlign = "center"; ctx.textBaseline = "top";
      const ticks = Math.min(6, this.cols);
      for (let k = 0; k < ticks; k++) {
        const i = Math.round(k * (this.cols - 1) / Math.max(1, ticks - 1));
        ctx.fillText(String(p.x0[i]), g.L + (i + 0.5) * colW, g.T + ph + 5);
      }
      const clip = p.clip || {};
      ctx.setLineDash([5, 4]); ctx.strokeStyle = "#ffffff"; ctx.lineWidth = 1.2;
      for (const c of [clip.lo, clip.hi]) {
        if (c === null || c === undefined || c < lo || c > hi) continue;
        ctx.beginPath(); ctx.moveTo(g.L, yOf(c)); ctx.lineTo(g.L + pw, yOf(c)); ctx.stroke();
      }
      ctx.setLineDash([]);
      this.layerEl.style.left = g.L + "px"; this.layerEl.style.width = pw + "px";
      this.layerEl.style.top = g.T + "px"; this.layerEl.style.height = ph + "px";
      placeMarks(this.layerEl, this.marks, (s) => this.stepToPx(s, colW), pw);
      this.drawLegend(zmax);
    }
    stepToPx(s, colW) {
      const x0 = this.data.x0, x1 = this.data.x1;
      let a = 0, b = x0.length - 1;
      if (!x0.length || s < x0[0] || s > x1[b]) return NaN;
      while (a < b) { const m = (a + b + 1) >> 1; if (x0[m] <= s) a = m; else b = m - 1; }
      const span = x1[a] - x0[a];
      return (a + (span > 0 ? (s - x0[a]) / span : 0.5)) * colW;
    }
    drawLegend(zmax) {
      this.legend.textContent = "";
      const c = el("canvas"); c.width = 160; c.height = 10;
      const ctx = c.getContext("2d");
      for (let i = 0; i < 160; i++) { ctx.fillStyle = viridis(i / 159); ctx.fillRect(i, 0, 1, 10); }
      this.legend.append(document.createTextNode("0%"), c, document.createTextNode((zmax * 100).toFixed(1) +
        "% of a step's tokens (square-root scale)"));
    }
    hover(e) {
      const p = this.data; if (!p || !p.has_hist || !this.cols) return;
      const g = this.geometry(), r = this.canvas.getBoundingClientRect();
      const x = (e.clientX - r.left) * g.W / r.width, y = (e.clientY - r.top);
      const pw = g.W - g.L - g.R, ph = g.H - g.T - g.B, nb = p.edges.bins + 2, rowH = (ph - 2 * g.gap) / nb;
      const i = Math.floor((x - g.L) / (pw / this.cols));
      const row = Math.floor((g.T + ph - y) / rowH);
      if (i < 0 || i >= this.cols || row < 0 || row >= nb) { hideTip(); return; }
      const w = (p.edges.hi - p.edges.lo) / p.edges.bins;
      const bin = row === 0 ? `l ≤ ${p.edges.lo}` : row === nb - 1 ? `l > ${p.edges.hi}` :
        `${(p.edges.lo + (row - 1) * w).toFixed(2)} < l ≤ ${(p.edges.lo + row * w).toFixed(2)}`;
      const steps = p.x0[i] === p.x1[i] ? `step ${p.x0[i]}` : `steps ${p.x0[i]}–${p.x1[i]}`;
      showTip(e, `${steps}\n${bin}: ${(p.z[i][row] * 100).toFixed(2)}% of ${p.tokens[i]} tokens`);
    }
  }

  window.GD = { PALETTE, DASHES, el, LineChart, HeatMap, placeMarks, showTip, hideTip };
})();

// History: a uPlot chart per metric with a line per room, over a preset, custom or zoomed range.

import { describe, seriesName, withUnit } from "./metrics.js";
import { el, roomColor, sortedNames } from "./overview.js";

const MINUTE = 60_000, HOUR = 60 * MINUTE, DAY = 24 * HOUR;

export const CHARTS = ["temperature_celsius", "humidity_percent", "pressure_hpa", "power_watts"];
const ALL_CHARTS = encodeURIComponent(`{__name__=~"${CHARTS.join("|")}"}`);

// uPlot is loaded by the first History view, after its first query is on its way: the hub computes the answer
// while the browser parses uPlot, and an Overview visit never loads it. A rule's preview (rules.js) loads it too.
let uplotReady = null;
export function loadUplot() {
  uplotReady ??= new Promise((resolve) => {
    if (typeof uPlot !== "undefined") return resolve(true);
    const script = el("script", { src: "/assets/uplot/uPlot.iife.min.js" });
    script.addEventListener("load", () => resolve(true));
    script.addEventListener("error", () => resolve(false));
    document.head.append(script);
  });
  return uplotReady;
}

// A query's answer as metric -> {series: [...]} of that metric.
function byMetric(result) {
  const out = new Map();
  for (const s of result.series) {
    if (!out.has(s.metric)) out.set(s.metric, { series: [] });
    out.get(s.metric).series.push(s);
  }
  return out;
}

function nextFrame() {
  return new Promise((resolve) => requestAnimationFrame(() => setTimeout(resolve)));
}

// Steps give each chart a few hundred points; whole hours let the hub answer from its hourly rollups.
export const PRESETS = {
  "24h": { label: "24 h", span: DAY, step: 5 * MINUTE, text: "the last 24 hours" },
  "7d": { label: "7 d", span: 7 * DAY, step: 30 * MINUTE, text: "the last 7 days" },
  "30d": { label: "30 d", span: 30 * DAY, step: 2 * HOUR, text: "the last 30 days" },
  "1y": { label: "1 y", span: 365 * DAY, step: DAY, text: "the last year" },
};
const STEPS = [1, 2, 5, 10, 15, 30, 60, 120, 180, 360, 720, 1440, 2880, 10080].map((m) => m * MINUTE);
const MAX_POINTS = 600;
const MIN_ZOOM = 30 * MINUTE;
const BAND_STEP = HOUR; // from hourly buckets on, a min–max band shows what the averages hide

export function stepFor(span) {
  return STEPS.find((s) => span / s <= MAX_POINTS) ?? STEPS[STEPS.length - 1];
}

export function stepParam(ms) {
  if (ms % DAY === 0) return `${ms / DAY}d`;
  if (ms % HOUR === 0) return `${ms / HOUR}h`;
  return `${ms / MINUTE}m`;
}

function stepText(ms) {
  if (ms === DAY) return "daily";
  if (ms === HOUR) return "hourly";
  if (ms % DAY === 0) return `${ms / DAY}-day`;
  if (ms % HOUR === 0) return `${ms / HOUR}-hour`;
  return `${ms / MINUTE}-minute`;
}

export class History {
  constructor(root) {
    this.root = root;
    this.chartsEl = root.querySelector("#charts");
    this.statusEl = root.querySelector("#range-status");
    this.form = root.querySelector("#range-form");
    this.from = root.querySelector("#range-from");
    this.to = root.querySelector("#range-to");
    this.errorEl = root.querySelector("#range-error");
    this.resetZoom = root.querySelector("#reset-zoom");
    this.charts = new Map(); // metric -> uPlot
    this.range = null;
    this.generation = 0;
    this.resize = new ResizeObserver((entries) => {
      for (const entry of entries) this.charts.get(entry.target.dataset.metric)?.setSize(size(entry.target));
    });

    for (const button of root.querySelectorAll("[data-preset]")) {
      button.addEventListener("click", () => this.navigate({ range: button.dataset.preset }));
    }
    this.form.addEventListener("submit", (e) => {
      e.preventDefault();
      const start = this.from.value && new Date(`${this.from.value}T00:00`).getTime();
      const end = this.to.value && new Date(`${this.to.value}T00:00`).getTime() + DAY - 1;
      if (!start || !end || end <= start) {
        this.errorEl.textContent = "Choose a start date on or before the end date.";
        this.from.setAttribute("aria-invalid", "true");
        this.from.focus();
        return;
      }
      this.errorEl.textContent = "";
      this.from.removeAttribute("aria-invalid");
      this.navigate({ start, end });
    });
    this.resetZoom.addEventListener("click", () => this.navigate(this.beforeZoom ?? { range: "7d" }));
    setInterval(() => this.#refreshIfLive(), MINUTE);
  }

  // The range lives in the URL (#history?range=7d, #history?start=…&end=…) so a view can be bookmarked.
  navigate(params, zoom = false) {
    if (!zoom) this.beforeZoom = null;
    const query = new URLSearchParams(Object.entries(params).map(([k, v]) => [k, String(v)]));
    if (zoom) query.set("zoom", "1");
    const hash = `#history?${query}`;
    if (hash === location.hash) return;
    this.root.dataset.state = "loading"; // from now: the hashchange that loads the new range comes a task later
    location.hash = hash;
  }

  show(params) {
    const now = Date.now();
    let range;
    if (params.get("start") && params.get("end")) {
      const start = Number(params.get("start")), end = Number(params.get("end"));
      range = { start, end, step: stepFor(end - start), zoomed: params.get("zoom") === "1" };
      range.text = `${fmtDate(start)} – ${fmtDate(end)}`;
    } else {
      const preset = PRESETS[params.get("range")] ? params.get("range") : "7d";
      const p = PRESETS[preset];
      range = { preset, start: now - p.span, end: now, step: p.step, text: p.text };
    }
    this.range = range;
    for (const button of this.root.querySelectorAll("[data-preset]")) {
      button.setAttribute("aria-pressed", String(button.dataset.preset === range.preset));
    }
    this.from.value = isoDate(range.start);
    this.to.value = isoDate(range.end);
    this.resetZoom.hidden = !range.zoomed;
    return this.load();
  }

  #refreshIfLive() {
    const r = this.range;
    if (!r?.preset || this.root.hidden || document.hidden) return;
    if (Date.now() - this.loadedAt >= Math.min(Math.max(r.step, MINUTE), 15 * MINUTE)) this.show(new URLSearchParams({ range: r.preset }));
  }

  async load() {
    const generation = ++this.generation;
    const { start, end, step } = this.range;
    const band = step >= BAND_STEP;
    this.loadedAt = Date.now();
    this.root.dataset.state = "loading";
    this.statusEl.textContent = `Loading ${this.range.text}…`;
    // One query per aggregation for all charts (the hub's series index picks them by name), per metric after.
    const query = (agg) =>
      fetch(`/api/query?match=${ALL_CHARTS}&start=${start}&end=${end}&step=${stepParam(step)}&agg=${agg}`).then((r) => {
        if (!r.ok) return r.json().then((e) => Promise.reject(new Error(e.error)));
        return r.json();
      }).then(byMetric);
    try {
      // Lines first, bands after: the averages are what people read. The data is asked for while uPlot loads.
      const mean = query("mean");
      const [means, haveUplot] = await Promise.all([mean, loadUplot()]);
      if (generation !== this.generation) return;
      if (!haveUplot) {
        this.root.dataset.state = "error";
        this.statusEl.textContent = "The charts need uPlot, which this hub does not have: run `make venv` where roost is installed.";
        return;
      }
      const shown = CHARTS.filter((m) => means.has(m));
      this.#draw(shown, Object.fromEntries(shown.map((m) => [m, { mean: means.get(m) }])));
      performance.mark("roost:history-lines");
      const note = band ? ", shaded: lowest to highest" : "";
      this.statusEl.textContent = shown.length
        ? `Showing ${this.range.text}: ${stepText(step)} averages${note}. Drag across a chart to zoom in.`
        : `No readings in ${this.range.text}.`;
      if (band && shown.length) {
        await nextFrame(); // let the lines reach the screen before the band queries' answers are parsed
        const [mins, maxs] = await Promise.all([query("min"), query("max")]);
        if (generation !== this.generation) return;
        const empty = { series: [] };
        this.#draw(shown, Object.fromEntries(shown.map((m) => [m, { mean: means.get(m), min: mins.get(m) ?? empty, max: maxs.get(m) ?? empty }])));
        performance.mark("roost:history-bands");
      }
      this.root.dataset.state = "drawn";
    } catch (err) {
      if (generation !== this.generation) return;
      this.root.dataset.state = "error";
      this.statusEl.textContent = `Cannot load the history: ${err.message}`;
    }
  }

  #draw(metrics, results) {
    const { start, end, step } = this.range;
    const lo = start - (start % step), hi = end - (end % step);
    const n = Math.round((hi - lo) / step) + 1;
    const xs = Array.from({ length: n }, (_v, i) => (lo + i * step) / 1000);

    for (const [metric, chart] of this.charts) {
      if (!metrics.includes(metric)) this.#remove(metric, chart);
    }
    for (const metric of metrics) {
      const info = describe(metric);
      const r = results[metric];
      const names = sortedNames(r.mean.series.map((s) => seriesName(s.labels, s.series)));
      const lines = r.mean.series
        .map((s) => ({ s, name: seriesName(s.labels, s.series) }))
        .sort((a, b) => a.name.localeCompare(b.name));
      const align = (s) => {
        const out = new Array(n).fill(null);
        if (!s) return out;
        for (let i = 0; i < s.ts.length; i++) out[Math.round((s.ts[i] - lo) / step)] = s.values[i];
        return out;
      };
      const data = [xs, ...lines.map((l) => align(l.s))];
      const series = [{}];
      for (const { name } of lines) {
        const color = roomColor(names, name);
        series.push({ label: name, stroke: color, width: 2, value: (_u, v) => withUnit(v, info), points: { show: false } });
      }
      const bands = [];
      if (r.min && r.max) {
        const find = (res, l) => res.series.find((x) => x.series === l.s.series);
        for (const l of lines) {
          const color = roomColor(names, l.name);
          data.push(align(find(r.max, l)), align(find(r.min, l)));
          const edge = { stroke: "transparent", width: 0, class: "band-edge", points: { show: false }, value: (_u, v) => withUnit(v, info) };
          series.push({ ...edge, label: `${l.name} max` }, { ...edge, label: `${l.name} min` });
          bands.push({ series: [data.length - 2, data.length - 1], fill: `${color}26` });
        }
      }
      this.#chart(metric, info, data, series, bands, lines.length);
    }
  }

  #chart(metric, info, data, series, bands, lineCount) {
    let figure = this.chartsEl.querySelector(`figure[data-metric="${metric}"]`);
    if (!figure) {
      figure = el("figure", { class: "chart", "data-metric": metric, "aria-labelledby": `chart-${metric}` });
      const caption = el("figcaption", { id: `chart-${metric}` });
      caption.textContent = `${info.title}${info.unit ? ` (${info.unit})` : ""}`;
      const plot = el("div", { class: "plot", "data-metric": metric });
      figure.append(caption, plot);
      const order = CHARTS.indexOf(metric);
      const next = [...this.chartsEl.children].find((f) => CHARTS.indexOf(f.dataset.metric) > order);
      this.chartsEl.insertBefore(figure, next ?? null);
      this.resize.observe(plot);
    }
    const plot = figure.querySelector(".plot");
    this.charts.get(metric)?.destroy();
    const opts = {
      ...size(plot),
      series,
      bands,
      scales: { x: { time: true } },
      legend: { live: true },
      cursor: {
        drag: { x: true, y: false, setScale: false },
        sync: { key: "roost-history" },
        points: { size: 7 },
      },
      axes: [
        { stroke: "#4a545e", grid: { stroke: "#e8ebee", width: 1 }, ticks: { stroke: "#d5dadf", width: 1 } },
        {
          stroke: "#4a545e",
          grid: { stroke: "#e8ebee", width: 1 },
          ticks: { show: false },
          size: (_u, values) => (values ? Math.max(...values.map((v) => v.length)) * 7.2 + 16 : 48),
          values: (_u, splits, _i, _space, incr) => splits.map((v) => withUnit(v, { ...info, decimals: decimalsFor(incr, info.decimals) })),
        },
      ],
      hooks: { setSelect: [(u) => this.#zoom(u)] },
    };
    const chart = new uPlot(opts, data, plot);
    this.charts.set(metric, chart);
    figure.dataset.lines = String(lineCount);
    figure.dataset.bands = String(bands.length);
    figure.dataset.points = String(data[0].length);
    figure.dataset.values = String(data.slice(1, lineCount + 1).reduce((n, ys) => n + ys.filter((y) => y != null).length, 0));
    figure.dataset.step = String(this.range.step);
  }

  #remove(metric, chart) {
    chart.destroy();
    this.charts.delete(metric);
    this.chartsEl.querySelector(`figure[data-metric="${metric}"]`)?.remove();
  }

  #zoom(u) {
    const { left, width } = u.select;
    if (width < 5) return;
    let a = u.posToVal(left, "x") * 1000, b = u.posToVal(left + width, "x") * 1000;
    u.setSelect({ left: 0, top: 0, width: 0, height: 0 }, false);
    if (b - a < MIN_ZOOM) {
      const mid = (a + b) / 2;
      [a, b] = [mid - MIN_ZOOM / 2, mid + MIN_ZOOM / 2];
    }
    const current = Object.fromEntries(new URLSearchParams(location.hash.split("?")[1] ?? ""));
    const before = this.beforeZoom ?? current;
    this.navigate({ start: Math.round(a), end: Math.round(b) }, true);
    this.beforeZoom = before;
  }
}

function size(plot) {
  const width = Math.max(200, Math.floor(plot.clientWidth));
  return { width, height: width < 480 ? 190 : 230 };
}

function decimalsFor(incr, max) {
  if (!incr) return max;
  return Math.min(Math.max(0, -Math.floor(Math.log10(incr))), Math.max(max, 2));
}

function isoDate(ms) {
  const d = new Date(ms);
  return `${d.getFullYear()}-${String(d.getMonth() + 1).padStart(2, "0")}-${String(d.getDate()).padStart(2, "0")}`;
}

function fmtDate(ms) {
  return new Date(ms).toLocaleString(undefined, { dateStyle: "medium", timeStyle: "short" });
}

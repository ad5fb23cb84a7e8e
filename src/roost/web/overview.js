// Overview: a tile per room (series with a `room` label) and per energy meter (series with a `meter` label),
// discovered from what the hub stores and updated in place as readings arrive.

import { describe, number, withUnit, words, PALETTE } from "./metrics.js";

const ROOM_ORDER = ["temperature_celsius", "humidity_percent", "pressure_hpa"];
const STALE_MS = 10 * 60_000;
const QUARTER_HOUR = 15 * 60_000;

export function roomColor(rooms, room) {
  return PALETTE[rooms.indexOf(room) % PALETTE.length];
}

export function sortedNames(names) {
  return [...new Set(names)].sort((a, b) => a.localeCompare(b));
}

export class Overview {
  constructor(root, live) {
    this.root = root;
    this.live = live;
    this.cells = new Map(); // series text -> <dd>
    this.ages = []; // [{el, series[]}]
    this.layout = "";
    this.baselines = new Map(); // energy series text -> {day, value}
    live.onChange((changed, snapshot) => this.#update(changed, snapshot));
    setInterval(() => this.#refreshAges(), 5000);
  }

  #groups() {
    const rooms = new Map();
    const meters = new Map();
    for (const r of this.live.latest.values()) {
      if (r.labels.room) push(rooms, r.labels.room, r);
      else if (r.labels.meter) push(meters, r.labels.meter, r);
    }
    return { rooms, meters };
  }

  #update(changed, snapshot) {
    const { rooms, meters } = this.#groups();
    const layout = JSON.stringify([...rooms, ...meters].map(([k, rs]) => [k, rs.map((r) => r.series).sort()]));
    if (snapshot || layout !== this.layout) {
      this.layout = layout;
      this.#render(rooms, meters);
    } else {
      for (const r of changed) this.#setCell(r);
    }
    for (const r of changed) if (r.metric === "energy_kwh_total") this.#updateToday(r);
    this.#refreshAges();
  }

  #render(rooms, meters) {
    this.cells.clear();
    this.ages = [];
    const tiles = [];
    const roomNames = sortedNames(rooms.keys());
    for (const room of roomNames) {
      const readings = rooms.get(room).sort(byMetric(ROOM_ORDER));
      tiles.push(this.#tile(`room-${room}`, words(room), roomColor(roomNames, room), readings, { room }));
    }
    const meterNames = sortedNames(meters.keys());
    for (const meter of meterNames) {
      const readings = meters.get(meter).sort(byMetric(["power_watts", "energy_kwh_total"]));
      const title = meterNames.length === 1 && meter === "main" ? "Energy" : `Energy · ${words(meter)}`;
      tiles.push(this.#tile(`meter-${meter}`, title, null, readings, { meter }, true));
    }
    if (!tiles.length) {
      const p = document.createElement("p");
      p.className = "empty";
      p.textContent = "No readings with a room or meter label yet. Series appear here as soon as the hub stores them.";
      tiles.push(p);
    }
    this.root.replaceChildren(...tiles);
    for (const r of this.live.latest.values()) this.#setCell(r);
    for (const r of this.live.latest.values()) if (r.metric === "energy_kwh_total") this.#updateToday(r);
  }

  #tile(key, title, color, readings, data, wide = false) {
    // A meter (kWh counters of seven digits, often a dozen registers) gets two grid columns' width.
    const article = el("article", { class: wide || readings.length > 5 ? "tile wide" : "tile", "aria-labelledby": `tile-${key}` });
    Object.assign(article.dataset, data);
    const header = el("header");
    const h2 = el("h2", { id: `tile-${key}` });
    if (color) h2.append(el("span", { class: "dot", style: `background:${color}`, "aria-hidden": "true" }));
    h2.append(title);
    const age = el("p", { class: "age" });
    header.append(h2, age);
    this.ages.push({ el: age, tile: article, series: readings.map((r) => r.series) });

    const dl = el("dl", { class: "readings", "aria-live": "polite" });
    readings.forEach((r, i) => {
      const info = describe(r.metric);
      const isCounter = r.metric === "energy_kwh_total";
      if (isCounter) {
        const today = el("dd", { "data-today": r.series });
        today.textContent = "—";
        dl.append(row("Today", today, ""));
      }
      const dd = el("dd", { "data-series": r.series });
      this.cells.set(r.series, dd);
      dl.append(row(isCounter ? "Meter reading" : info.title, dd, i === 0 ? "primary" : ""));
    });
    article.append(header, dl);
    return article;
  }

  #setCell(r) {
    const dd = this.cells.get(r.series);
    if (!dd) return;
    dd.textContent = withUnit(r.value, describe(r.metric));
    dd.dataset.value = String(r.value);
    dd.dataset.ts = String(r.ts);
  }

  async #updateToday(r) {
    const dd = this.root.querySelector(`dd[data-today="${CSS.escape(r.series)}"]`);
    if (!dd) return;
    const midnight = new Date(r.ts).setHours(0, 0, 0, 0);
    let base = this.baselines.get(r.series);
    if (!base || base.day !== midnight) {
      base = { day: midnight, value: await counterAt(r.series, midnight) };
      this.baselines.set(r.series, base);
    }
    const today = base.value == null ? null : r.value - base.value;
    // A counter that went backwards was reset or replaced: there is no honest figure for today.
    dd.textContent = today == null || today < 0 ? "—" : `${number(today, 2)}\u00a0kWh`;
    dd.dataset.value = today == null ? "" : String(today);
  }

  #refreshAges() {
    const now = Date.now();
    for (const { el: p, tile, series } of this.ages) {
      const ts = Math.max(...series.map((s) => this.live.latest.get(s)?.ts ?? 0));
      if (!ts) continue;
      p.textContent = ago(now - ts);
      p.title = new Date(ts).toLocaleString();
      tile.classList.toggle("stale", now - ts > STALE_MS);
    }
  }
}

// The counter's value at local midnight: the last reading before it, else the first one after it.
async function counterAt(series, midnight) {
  const q = (params) => fetch(`/api/query?match=${encodeURIComponent(series)}&${params}`).then((r) => r.json());
  const before = await q(`start=${midnight - 1}&end=${midnight - 1}&step=15m&agg=last`);
  const v = before.series?.[0]?.values;
  if (v?.length) return v[v.length - 1];
  const after = await q(`start=${midnight}&end=${midnight + QUARTER_HOUR - 1}&step=15m&agg=min`);
  return after.series?.[0]?.values?.[0] ?? null;
}

function ago(ms) {
  if (ms < 30_000) return "just now";
  if (ms < 3600_000) return `${Math.round(ms / 60_000) || 1} min ago`;
  if (ms < 86400_000) return `${Math.round(ms / 3600_000)} h ago`;
  return `${Math.round(ms / 86400_000)} d ago`;
}

function byMetric(order) {
  const rank = (m) => (order.includes(m) ? order.indexOf(m) : order.length);
  return (a, b) => rank(a.metric) - rank(b.metric) || a.metric.localeCompare(b.metric);
}

function push(map, key, value) {
  if (!map.has(key)) map.set(key, []);
  map.get(key).push(value);
}

function row(label, dd, cls) {
  const div = el("div", cls ? { class: cls } : {});
  const dt = el("dt");
  dt.textContent = label;
  div.append(dt, dd);
  return div;
}

export function el(tag, attrs = {}) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, v);
  return node;
}

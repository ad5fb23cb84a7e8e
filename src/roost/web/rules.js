// Rules: every rule is a thing of @type "Rule" (docs/rules.md) with its sentence as the description, a writable
// `enabled`, a read-only `last_run` and the rule's own properties (a wake time, ...). "Preview" replays the
// stored readings through a rule (GET /api/rules/NAME/preview, a read) and shows what it would have done.

import { describe, seriesName, withUnit } from "./metrics.js";
import { loadUplot, PRESETS, stepParam } from "./history.js";
import { el, roomColor, sortedNames } from "./overview.js";
import { isRule, ThingCards, thingHeader } from "./things.js";

const WINDOWS = ["24h", "7d", "30d"]; // the History presets a preview offers; the hub takes up to 90d
const ruleName = (thing) => thing.id.replace(/^rule-/, ""); // rule things are rule-<ClassName>

// An open preview lives in the URL (#rules?preview=WarmLounge&since=24h): reloading or sharing the page keeps it,
// and Back closes it. Its buttons change the address; the hashchange opens, reloads or closes the preview.
function previewHash(rule, since = "7d") {
  return `#rules?${new URLSearchParams({ preview: rule, since })}`;
}

export function rulesView(root, client) {
  const preview = new RulePreview(root);
  const titles = new Map();
  const cards = new ThingCards(root, client, {
    pick: (things) => things.filter(isRule).sort((a, b) => a.title.localeCompare(b.title)),
    empty: "No rules are loaded. Put a rule file in the rules directory (docs/rules.md); it appears here when the hub loads it.",
    card: (thing, row) => {
      const article = el("article", { class: "thing rule", "aria-labelledby": `t-${thing.id}`, "data-thing": thing.id });
      const sentence = el("p", { class: "sentence" });
      sentence.textContent = thing.description || thing.title;
      const props = el("div", { class: "props" });
      const names = Object.keys(thing.properties ?? {});
      const first = ["enabled", "last_run"].filter((n) => names.includes(n));
      for (const name of [...first, ...names.filter((n) => !first.includes(n))]) {
        props.append(row(name, name === "last_run" ? { empty: "never" } : {}));
      }
      const button = el("button", { type: "button", class: "preview-open", "aria-label": `Preview ${thing.title}`,
                                    "aria-controls": "rule-preview" });
      button.textContent = "Preview";
      titles.set(ruleName(thing), thing.title);
      button.addEventListener("click", () => {
        const hash = previewHash(ruleName(thing));
        if (location.hash === hash) preview.reveal(); // already open on this rule: bring it into view
        else location.hash = hash;
      });
      const actions = el("p", { class: "actions" });
      actions.append(button);
      article.append(thingHeader(thing, ""), sentence, props, actions);
      return article;
    },
  });
  window.roost.rulePreview = preview; // for tests and the console
  return {
    async show(params = new URLSearchParams()) {
      await cards.show();
      const rule = params.get("preview");
      if (!rule) return preview.close();
      const since = WINDOWS.includes(params.get("since")) ? params.get("since") : "7d";
      return preview.show(rule, titles.get(rule) ?? rule, since);
    },
  };
}

// "Timer off(): turn off Lounge Lamp" without its cause, which the table shows beside it.
function clause(step) {
  const cause = `${step.trigger.charAt(0).toUpperCase()}${step.trigger.slice(1)}: `;
  return step.sentence.startsWith(cause) ? step.sentence.slice(cause.length) : step.sentence;
}

function when(iso) {
  return new Date(iso).toLocaleString(undefined, { dateStyle: "medium", timeStyle: "medium" });
}

function cell(tag, text, attrs = {}) {
  const node = el(tag, attrs);
  node.textContent = text;
  return node;
}

// The preview panel above the rule cards: a window (24 h, 7 d, 30 d), a chart per threshold the rule watches with
// a mark where it acted, and its timeline (what it did, and where it failed) as a table.
export class RulePreview {
  constructor(list) {
    this.root = el("section", { id: "rule-preview", class: "thing preview", "aria-labelledby": "rule-preview-title" });
    this.root.hidden = true;
    const header = el("header", { class: "preview-head" });
    this.title = cell("h2", "Preview", { id: "rule-preview-title", tabindex: "-1" });
    const windows = el("div", { class: "presets", role: "group", "aria-label": "Preview window" });
    for (const since of WINDOWS) {
      const b = cell("button", PRESETS[since].label, { type: "button", "data-since": since, "aria-pressed": "false",
                                                       "aria-label": `Preview ${PRESETS[since].text}` });
      b.addEventListener("click", () => { location.hash = previewHash(this.rule, since); });
      windows.append(b);
    }
    const close = cell("button", "Close", { type: "button", class: "preview-close" });
    close.addEventListener("click", () => { location.hash = "#rules"; });
    header.append(this.title, windows, close);
    this.sentence = el("p", { class: "sentence" });
    this.status = el("p", { class: "status", role: "status", "aria-live": "polite" });
    this.error = el("p", { class: "error", role: "alert" });
    this.notes = el("ul", { class: "notes" });
    this.charts = el("div", { class: "charts" });
    this.timeline = el("div", { class: "timeline" });
    this.root.append(header, this.sentence, this.status, this.error, this.notes, this.charts, this.timeline);
    list.before(this.root);
    this.plots = [];
    this.generation = 0;
    this.resize = new ResizeObserver(() => {
      for (const { plot, div } of this.plots) plot.setSize(size(div));
    });
  }

  open(rule, title = rule, since = "7d") {
    this.rule = rule;
    this.ruleTitle = title;
    this.root.hidden = false;
    this.title.textContent = `Preview: ${title}`;
    const loading = this.load(since);
    this.reveal();
    return loading;
  }

  reveal() {
    this.root.scrollIntoView({ block: "start" });
    this.title.focus({ preventScroll: true });
  }

  // What the address asks for: this rule over this window, opened or reloaded only when it is not shown already.
  show(rule, title, since) {
    if (this.root.hidden || rule !== this.rule) return this.open(rule, title, since);
    if (since !== this.since) return this.load(since);
    return Promise.resolve();
  }

  close() {
    if (this.root.hidden) return;
    this.generation++;
    this.#clearPlots();
    this.root.hidden = true;
    document.querySelector(`[data-thing="rule-${CSS.escape(this.rule)}"] .preview-open`)?.focus();
  }

  async load(since) {
    this.since = since;
    const generation = ++this.generation;
    for (const b of this.root.querySelectorAll("[data-since]")) b.setAttribute("aria-pressed", String(b.dataset.since === since));
    const p = PRESETS[since];
    this.root.dataset.state = "loading";
    this.root.setAttribute("aria-busy", "true");
    this.status.textContent = `Replaying ${p.text} through ${this.ruleTitle}…`;
    this.error.textContent = "";
    let answer;
    try {
      const r = await fetch(`/api/rules/${encodeURIComponent(this.rule)}/preview?since=${since}`);
      const text = await r.text();
      let body = null;
      try { body = JSON.parse(text); } catch { /* a proxy's or a crash's page: shown as it came */ }
      if (!r.ok) throw new Error(body?.error ?? `the hub answered ${r.status}: ${text.slice(0, 300)}`);
      answer = body;
    } catch (err) {
      if (generation !== this.generation) return;
      this.#fail(`Cannot preview ${this.ruleTitle}: ${err.message}`);
      return;
    }
    if (generation !== this.generation) return;
    this.answer = answer;
    this.sentence.textContent = answer.sentence;
    this.notes.replaceChildren(...answer.notes.map((n) => cell("li", n)));
    this.#timeline(answer);
    const acted = answer.steps.length, failed = answer.failures.length;
    this.status.textContent = `${p.text[0].toUpperCase()}${p.text.slice(1)}: ` +
      (acted ? `${acted} ${acted === 1 ? "action" : "actions"}` : "the rule would have done nothing") +
      (failed ? `, ${failed} ${failed === 1 ? "failure" : "failures"}` : "") + ". Nothing was actuated.";
    try {
      await this.#charts(answer, p);
    } catch (err) {
      if (generation !== this.generation) return;
      this.error.textContent = `Cannot draw the rule's inputs: ${err.message}`;
    }
    if (generation !== this.generation) return;
    this.root.removeAttribute("aria-busy");
    this.root.dataset.state = "ready";
  }

  #fail(message) {
    this.#clearPlots();
    this.charts.replaceChildren();
    this.timeline.replaceChildren();
    this.notes.replaceChildren();
    this.sentence.textContent = "";
    this.status.textContent = "";
    this.error.textContent = message;
    this.root.removeAttribute("aria-busy");
    this.root.dataset.state = "error";
  }

  // Steps and failures in time order, as a table: when, because of what, what the rule did (or the error).
  #timeline(answer) {
    const rows = [
      ...answer.steps.map((s) => ({ kind: "step", at: s.at, trigger: s.trigger, what: clause(s) })),
      ...answer.failures.map((f) => ({ kind: "failure", at: f.at, trigger: f.trigger,
                                       what: f.error + (f.disabled ? " — the rule is disabled from here" : "") })),
    ].sort((a, b) => Date.parse(a.at) - Date.parse(b.at));
    if (!rows.length) {
      this.timeline.replaceChildren(cell("p", "No firings in this window.", { class: "empty" }));
      return;
    }
    const table = el("table", { class: "steps" });
    table.append(cell("caption", "What the rule would have done", { class: "visually-hidden" }));
    const head = el("tr");
    head.append(cell("th", "When", { scope: "col" }), cell("th", "Because", { scope: "col" }), cell("th", "What", { scope: "col" }));
    const thead = el("thead");
    thead.append(head);
    const tbody = el("tbody");
    for (const row of rows) {
      const tr = el("tr", { "data-kind": row.kind, "data-at": row.at });
      const time = cell("time", when(row.at), { datetime: row.at });
      const td = el("td");
      td.append(time);
      tr.append(td, cell("td", row.trigger), cell("td", row.kind === "failure" ? `Error: ${row.what}` : row.what));
      tbody.append(tr);
    }
    table.append(thead, tbody);
    this.timeline.replaceChildren(table);
  }

  #clearPlots() {
    for (const { plot, div } of this.plots) {
      this.resize.unobserve(div);
      plot.destroy();
    }
    this.plots = [];
  }

  // A chart per threshold the rule watches: its series' readings (means per History step), the limit dashed,
  // and a mark at each step and failure.
  async #charts(answer, preset) {
    this.#clearPlots();
    this.charts.replaceChildren();
    if (!answer.inputs.length) return;
    const start = Date.parse(answer.start), end = Date.parse(answer.end), step = preset.step;
    const results = await Promise.all(answer.inputs.map((input) =>
      fetch(`/api/query?match=${encodeURIComponent(input.selector)}&start=${start}&end=${end}&step=${stepParam(step)}&agg=mean`)
        .then((r) => r.ok ? r.json() : r.json().then((e) => Promise.reject(new Error(e.error))))));
    if (!(await loadUplot())) throw new Error("the charts need uPlot, which this hub does not have: run `make venv` where roost is installed");
    const lo = start - (start % step), n = Math.round((end - (end % step) - lo) / step) + 1;
    const xs = Array.from({ length: n }, (_v, i) => (lo + i * step) / 1000);
    answer.inputs.forEach((input, i) => {
      const result = results[i];
      const info = describe(result.series[0]?.metric ?? input.selector.split("{")[0]);
      const figure = el("figure", { class: "chart", "data-trigger": input.trigger });
      figure.append(cell("figcaption", input.trigger));
      const div = el("div", { class: "plot" });
      figure.append(div);
      this.charts.append(figure);
      const marks = [
        ...answer.steps.map((s) => ({ t: Date.parse(s.at), kind: s.trigger === input.trigger ? "caused" : "other" })),
        ...answer.failures.map((f) => ({ t: Date.parse(f.at), kind: "failed" })),
      ];
      figure.dataset.marks = String(marks.length);
      figure.dataset.caused = String(marks.filter((m) => m.kind === "caused").length);
      figure.dataset.lines = String(result.series.length);
      if (!result.series.length) {
        figure.append(cell("p", `No stored readings match ${input.selector} in this window.`, { class: "empty" }));
        return;
      }
      const names = sortedNames(result.series.map((s) => seriesName(s.labels, s.series)));
      const data = [xs];
      const series = [{}];
      for (const s of result.series) {
        const ys = new Array(n).fill(null);
        for (let k = 0; k < s.ts.length; k++) ys[Math.round((s.ts[k] - lo) / step)] = s.values[k];
        const name = seriesName(s.labels, s.series);
        data.push(ys);
        series.push({ label: name, stroke: roomColor(names, name), width: 2, points: { show: false }, value: (_u, v) => withUnit(v, info) });
      }
      data.push(xs.map(() => input.limit));
      series.push({ label: `${input.op} ${input.limit}`, stroke: "#5E5E5E", width: 1, dash: [6, 4], points: { show: false },
                    value: (_u, v) => withUnit(v, info) });
      const plot = new uPlot({
        ...size(div),
        series,
        scales: { x: { time: true } },
        legend: { live: true },
        cursor: { drag: { x: false, y: false }, points: { size: 7 } },
        axes: [
          { stroke: "#4a545e", grid: { stroke: "#e8ebee", width: 1 }, ticks: { stroke: "#d5dadf", width: 1 } },
          { stroke: "#4a545e", grid: { stroke: "#e8ebee", width: 1 }, ticks: { show: false }, size: 56,
            values: (_u, splits) => splits.map((v) => withUnit(v, info)) },
        ],
        hooks: { draw: [(u) => drawMarks(u, marks)] },
      }, data, div);
      const key = el("p", { class: "marks-key" });
      for (const [kind, text] of [["caused", "acted on this"], ["other", "other steps (timers, undos)"], ["failed", "failed"]]) {
        if (marks.some((m) => m.kind === kind)) key.append(cell("span", text, { "data-kind": kind }));
      }
      figure.append(key);
      this.plots.push({ plot, div });
      this.resize.observe(div);
    });
  }
}

// A vertical line at each time the rule acted: solid accent where this threshold caused it, dashed grey for its
// other steps (timers, undos, other triggers), dashed red where it failed.
const MARK = { caused: ["#1f5f8b", []], other: ["#8d979f", [4, 3]], failed: ["#b3261e", [3, 3]] };
function drawMarks(u, marks) {
  const { ctx } = u;
  const { top, height } = u.bbox;
  ctx.save();
  ctx.lineWidth = Math.max(1, devicePixelRatio);
  for (const { t, kind } of marks) {
    const x = Math.round(u.valToPos(t / 1000, "x", true));
    const [color, dash] = MARK[kind];
    ctx.strokeStyle = color;
    ctx.setLineDash(dash.map((d) => d * devicePixelRatio));
    ctx.beginPath();
    ctx.moveTo(x, top);
    ctx.lineTo(x, top + height);
    ctx.stroke();
  }
  ctx.restore();
}

function size(div) {
  const width = Math.max(200, Math.floor(div.clientWidth));
  return { width, height: width < 480 ? 170 : 200 };
}

// Backups: the restic repository, when the next backup runs, how the last one went, "Back up now", and the
// repository's snapshots of this hub (GET/POST /backups, docs/durability.md).

import { el } from "./overview.js";

const POLL_MS = 2000; // while a backup runs

function ago(seconds) {
  if (!seconds) return "never";
  const s = Math.max(0, Date.now() / 1000 - seconds);
  if (s < 90) return "just now";
  if (s < 90 * 60) return `${Math.round(s / 60)} min ago`;
  if (s < 36 * 3600) return `${Math.round(s / 3600)} h ago`;
  return `${Math.round(s / 86400)} days ago`;
}

function bytes(n) {
  if (!n) return "–";
  const units = ["B", "kB", "MB", "GB", "TB"];
  const i = Math.min(units.length - 1, Math.floor(Math.log10(n) / 3));
  return `${(n / 1000 ** i).toLocaleString(undefined, { maximumFractionDigits: i ? 1 : 0 })} ${units[i]}`;
}

function when(iso) {
  return new Date(iso).toLocaleString(undefined, { dateStyle: "medium", timeStyle: "short" });
}

function row(label, value, attrs = {}) {
  const div = el("div", { class: "prop", ...attrs });
  const name = el("span", { class: "prop-label" });
  name.textContent = label;
  const v = el("span", { class: "prop-value" });
  v.textContent = value;
  div.append(name, v);
  return div;
}

export class BackupsView {
  constructor(root) {
    this.root = root;
    this.timer = null;
  }

  async show() {
    clearTimeout(this.timer);
    let data;
    try {
      const r = await fetch("/backups");
      if (!r.ok) throw new Error(`the hub answered ${r.status}: ${await r.text()}`);
      data = await r.json();
    } catch (err) {
      this.root.replaceChildren(Object.assign(el("p", { class: "error", role: "alert" }), { textContent: `Cannot load the backup status: ${err.message}` }));
      return;
    }
    this.render(data);
    if (data.running && !document.getElementById("backups").hidden) this.timer = setTimeout(() => this.show(), POLL_MS);
  }

  render(d) {
    const s = d.status;
    const card = el("article", { class: "thing backup", "aria-labelledby": "backup-title" });
    const header = el("header");
    const h2 = el("h2", { id: "backup-title" });
    h2.textContent = "restic";
    const where = el("p", { class: "types" });
    where.textContent = d.repository;
    header.append(h2, where);
    const props = el("div", { class: "props" });
    const outcome = d.running ? "running…" : !s.last_attempt ? "no backup yet" : s.last_error ? "failed" : "succeeded";
    props.append(
      row("Last backup", outcome, { "data-outcome": d.running ? "running" : s.last_error ? "failed" : s.last_attempt ? "ok" : "none" }),
      row("Last success", ago(s.last_success)),
      row("Size", bytes(s.size)),
      row("Duration", s.duration ? `${s.duration.toFixed(1)} s` : "–"),
      row("Next", d.next_run ? when(d.next_run) : "only when asked (no schedule)"),
    );
    if (s.last_error && s.error) {
      const err = el("p", { class: "error", role: "alert" });
      err.textContent = s.error;
      props.append(err);
    }
    const now = el("button", { type: "button", class: "backup-now" });
    now.textContent = d.running ? "Backing up…" : "Back up now";
    now.disabled = d.running;
    now.addEventListener("click", () => this.start(now));
    const actions = el("p", { class: "actions" });
    actions.append(now);
    card.append(header, props, actions);

    const list = el("article", { class: "thing snapshots", "aria-labelledby": "snapshots-title" });
    const lh = el("h2", { id: "snapshots-title" });
    lh.textContent = `Snapshots (${d.snapshots.length})`;
    list.append(lh);
    if (d.snapshots_error) {
      list.append(Object.assign(el("p", { class: "error" }), { textContent: d.snapshots_error }));
    } else if (!d.snapshots.length) {
      list.append(Object.assign(el("p", { class: "empty" }), { textContent: "None yet." }));
    } else {
      const ul = el("ul", { class: "snapshot-list" });
      for (const snap of d.snapshots) {
        const li = el("li");
        const t = el("time", { datetime: snap.time });
        t.textContent = when(snap.time);
        const id = el("code");
        id.textContent = snap.id;
        li.append(t, " ", id);
        ul.append(li);
      }
      list.append(ul);
    }
    this.root.replaceChildren(card, list);
  }

  async start(button) {
    button.disabled = true;
    button.textContent = "Starting…";
    const r = await fetch("/backups", { method: "POST", headers: { "X-Roost-Request": "1" } });
    if (!r.ok && r.status !== 409) {
      button.textContent = `Could not start (${r.status})`;
      return;
    }
    this.show();
  }
}

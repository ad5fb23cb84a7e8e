// The newest value of every series, kept current by the hub's Server-Sent Events stream (/api/live).

export class Live {
  constructor(url = "/api/live") {
    this.url = url;
    this.latest = new Map(); // series text -> {series, metric, labels, ts, value}
    this.listeners = new Set();
    this.statusListeners = new Set();
    this.status = "connecting";
  }

  start() {
    const source = new EventSource(this.url);
    source.addEventListener("open", () => this.#setStatus("live"));
    // EventSource reconnects by itself (the hub sends `retry: 3000`); each reconnect starts with a snapshot.
    source.addEventListener("error", () => this.#setStatus(source.readyState === EventSource.CLOSED ? "closed" : "reconnecting"));
    source.addEventListener("snapshot", (e) => this.#apply(JSON.parse(e.data), true));
    source.addEventListener("readings", (e) => this.#apply(JSON.parse(e.data), false));
    this.source = source;
  }

  onChange(fn) { this.listeners.add(fn); }
  onStatus(fn) { this.statusListeners.add(fn); fn(this.status); }

  #setStatus(status) {
    this.status = status;
    for (const fn of this.statusListeners) fn(status);
  }

  #apply(readings, snapshot) {
    const changed = [];
    for (const r of readings) {
      const held = this.latest.get(r.series);
      if (!held || r.ts >= held.ts) {
        this.latest.set(r.series, r);
        changed.push(r);
      }
    }
    if (snapshot) this.#setStatus("live");
    if (changed.length || snapshot) for (const fn of this.listeners) fn(changed, snapshot);
  }
}

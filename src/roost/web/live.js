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
    source.addEventListener("error", () => {
      const closed = source.readyState === EventSource.CLOSED;
      this.#setStatus(closed ? "closed" : "reconnecting");
      if (closed) this.#loginIfRefused();
    });
    source.addEventListener("snapshot", (e) => this.#apply(JSON.parse(e.data), true));
    source.addEventListener("readings", (e) => this.#apply(JSON.parse(e.data), false));
    this.source = source;
  }

  // The stream closes for good when the hub refuses it. If it refuses this browser's login (its token was
  // revoked, its cookie expired), go to the login page and come back here.
  async #loginIfRefused() {
    const response = await fetch("/api/series?match=roost_login_check").catch(() => null);
    if (response?.status === 401) location.assign(`/login?next=${encodeURIComponent(location.pathname + location.search)}`);
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

// The hub's Web Thing API (docs/things.md) as the page sees it: the Thing Descriptions of `GET /things`, each
// thing's current values, kept current by the thing's WebSocket (`propertyStatus`), and writes by HTTP PUT.

const RECONNECT_MS = 3000;

export class ThingClient {
  constructor() {
    this.things = new Map(); // id -> Thing Description (with `id` shortened to the last path segment)
    this.values = new Map(); // id -> Map(property name -> value)
    this.connected = new Map(); // id -> boolean
    this.sockets = new Map(); // id -> WebSocket
    this.listeners = new Set();
  }

  // fn(kind, thingId, name, value): kind is "value" (a property changed), "connection" (value: connected or
  // not) or "things" (the list of things changed: re-render).
  onChange(fn) { this.listeners.add(fn); }

  #emit(kind, thingId, name, value) {
    for (const fn of this.listeners) fn(kind, thingId, name, value);
  }

  // Reads `GET /things` again (a device that joined since appears, one that left goes) and keeps a WebSocket
  // open to each thing. Resolves when every thing has its current values.
  async refresh() {
    const response = await fetch("/things");
    if (!response.ok) throw new Error(`GET /things answered ${response.status}`);
    const descriptions = await response.json();
    const seen = new Set();
    let changed = false;
    for (const d of descriptions) {
      const id = d.href.split("/").pop();
      seen.add(id);
      const before = this.things.get(id);
      if (!before || JSON.stringify(before) !== JSON.stringify({ ...d, id })) changed = true;
      this.things.set(id, { ...d, id });
    }
    for (const id of [...this.things.keys()]) {
      if (!seen.has(id)) {
        this.things.delete(id);
        this.values.delete(id);
        this.sockets.get(id)?.close(1000);
        this.sockets.delete(id);
        changed = true;
      }
    }
    if (changed) this.#emit("things");
    await Promise.all([...this.things.keys()].map((id) => (this.sockets.has(id) ? null : this.#connect(id))));
  }

  value(thingId, name) {
    return this.values.get(thingId)?.get(name);
  }

  // Writes one property through the API; resolves with the value the hub reports afterwards, rejects with the
  // API's own message (`{"error": "..."}`) when it refuses.
  async set(thingId, name, value) {
    const response = await fetch(`/things/${encodeURIComponent(thingId)}/properties/${encodeURIComponent(name)}`, {
      method: "PUT",
      // The hub refuses a change made with its login cookie without this header, which another site cannot send.
      headers: { "Content-Type": "application/json", "X-Roost-Request": "1" },
      body: JSON.stringify({ [name]: value }),
    });
    const body = await response.json().catch(() => ({}));
    if (!response.ok) throw new Error(body.error ?? `the hub answered ${response.status}`);
    this.#set(thingId, name, body[name]);
    return body[name];
  }

  #set(thingId, name, value) {
    if (!this.values.has(thingId)) this.values.set(thingId, new Map());
    const values = this.values.get(thingId);
    if (values.has(name) && Object.is(values.get(name), value)) return;
    values.set(name, value);
    this.#emit("value", thingId, name, value);
  }

  // Opens the socket first and reads the values once it is open, so a change in between is not missed; a value
  // that arrived on the socket while the read was under way is newer than what the read returns.
  #connect(id) {
    return new Promise((resolve) => {
      const scheme = location.protocol === "https:" ? "wss" : "ws";
      const socket = new WebSocket(`${scheme}://${location.host}/things/${encodeURIComponent(id)}`);
      this.sockets.set(id, socket);
      let pushed = null;
      socket.addEventListener("message", (e) => {
        const message = JSON.parse(e.data);
        if (message.messageType !== "propertyStatus") return;
        for (const [name, value] of Object.entries(message.data)) {
          pushed?.add(name);
          this.#set(id, name, value);
        }
      });
      socket.addEventListener("open", async () => {
        pushed = new Set();
        try {
          const response = await fetch(`/things/${encodeURIComponent(id)}/properties`);
          if (response.ok) {
            for (const [name, value] of Object.entries(await response.json())) if (!pushed.has(name)) this.#set(id, name, value);
          }
        } finally {
          pushed = null;
          this.connected.set(id, true);
          this.#emit("connection", id, null, true);
          resolve();
        }
      });
      socket.addEventListener("close", () => {
        resolve();
        if (this.sockets.get(id) !== socket) return; // replaced or removed on purpose
        this.sockets.delete(id);
        this.connected.set(id, false);
        this.#emit("connection", id, null, false);
        setTimeout(() => this.things.has(id) && !this.sockets.has(id) && this.#connect(id), RECONNECT_MS);
      });
    });
  }
}

// Capability and property types read as words: "OnOffSwitch" -> "On/off switch", "MultiLevelSensor" ->
// "Multi-level sensor".
const TYPE_WORDS = { OnOffSwitch: "On/off switch", MultiLevelSensor: "Multi-level sensor", SmartPlug: "Smart plug" };
export function typeWords(type) {
  return TYPE_WORDS[type] ?? type.replace(/([a-z])([A-Z])/g, "$1 $2").replace(/ (\w)/g, (_m, c) => ` ${c.toLowerCase()}`);
}

// The dashboard's entry point: sections, navigation by URL hash, and the live connection.

import { History } from "./history.js";
import { Live } from "./live.js";
import { Overview } from "./overview.js";

// A section is a <section id> in index.html plus an entry here. Sections of APIs a hub may not have (things,
// rules, backups) name that API; the hub lists the ones it serves in <html data-sections>, and only those
// appear (docs/dashboard.md, "Adding a section").
const SECTIONS = [
  { id: "overview", title: "Overview" },
  { id: "history", title: "History" },
  { id: "things", title: "Things", api: "things" },
  { id: "rules", title: "Rules", api: "rules" },
  { id: "backups", title: "Backups", api: "backups" },
];

const available = new Set((document.documentElement.dataset.sections ?? "").split(/\s+/).filter(Boolean));
const sections = SECTIONS.filter((s) => !s.api || available.has(s.api));

const live = new Live();
const overview = new Overview(document.getElementById("tiles"), live);
const history = new History(document.getElementById("history"));
window.roost = { live, overview, history }; // for tests, benchmarks and curious people with a console

// Things and Rules load their code when first shown: a History or Overview visit does not pay for them.
let thingClient = null;
const views = {};
async function view(id) {
  if (!views[id]) {
    const { ThingClient } = await import("./webthings.js");
    thingClient ??= window.roost.things = new ThingClient();
    const root = document.getElementById(`${id}-list`);
    views[id] = id === "things"
      ? (await import("./things.js")).thingsView(root, thingClient, available.has("rules"))
      : (await import("./rules.js")).rulesView(root, thingClient);
  }
  return views[id];
}

let backups = null;
async function backupsView() {
  backups ??= new (await import("./backups.js")).BackupsView(document.getElementById("backups-list"));
  return backups;
}

const nav = document.getElementById("nav");
nav.replaceChildren(...sections.map((s) => {
  const li = document.createElement("li");
  const a = document.createElement("a");
  a.href = `#${s.id}`;
  a.textContent = s.title;
  a.dataset.section = s.id;
  li.append(a);
  return li;
}));

function route(focus) {
  const [name, query = ""] = location.hash.slice(1).split("?");
  const current = sections.find((s) => s.id === name) ?? sections[0];
  for (const s of sections) document.getElementById(s.id).hidden = s !== current;
  for (const a of nav.querySelectorAll("a")) {
    if (a.dataset.section === current.id) a.setAttribute("aria-current", "page");
    else a.removeAttribute("aria-current");
  }
  document.title = `${current.title} · roost`;
  if (focus) document.getElementById(`${current.id}-title`).focus({ preventScroll: true });
  if (current.id === "history") return history.show(new URLSearchParams(query));
  if (current.id === "things" || current.id === "rules") return view(current.id).then((v) => v.show(new URLSearchParams(query)));
  if (current.id === "backups") return backupsView().then((v) => v.show());
  return Promise.resolve();
}

let lastSection = null;
window.addEventListener("hashchange", () => {
  const name = location.hash.slice(1).split("?")[0];
  route(name !== lastSection);
  lastSection = name;
});
lastSection = location.hash.slice(1).split("?")[0];
const firstView = route(false);

const status = document.getElementById("connection");
live.onStatus((state) => {
  status.dataset.state = state;
  status.textContent = { connecting: "Connecting…", live: "Live", reconnecting: "Reconnecting…", closed: "Disconnected" }[state];
});
// The view asked for comes first: the hub answers one request at a time, and the stream can wait a moment.
firstView.finally(() => live.start());

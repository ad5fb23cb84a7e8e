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
];

const available = new Set((document.documentElement.dataset.sections ?? "").split(/\s+/).filter(Boolean));
const sections = SECTIONS.filter((s) => !s.api || available.has(s.api));

const live = new Live();
const overview = new Overview(document.getElementById("tiles"), live);
const history = new History(document.getElementById("history"));
window.roost = { live, overview, history }; // for tests, benchmarks and curious people with a console

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
  return current.id === "history" ? history.show(new URLSearchParams(query)) : Promise.resolve();
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

// Things: a card per thing of the Web Thing API with its properties, lights and plugs first. Values follow the
// things' WebSockets; switches and sliders write through the API (controls.js).

import { propertyRow } from "./controls.js";
import { el } from "./overview.js";
import { typeWords } from "./webthings.js";

export const isRule = (thing) => (thing["@type"] ?? []).includes("Rule");

// A view of some of the client's things: `cards(things)` picks and orders them, `card(thing)` draws one.
export class ThingCards {
  constructor(root, client, { pick, card, empty }) {
    this.root = root;
    this.client = client;
    this.pick = pick;
    this.card = card;
    this.empty = empty;
    this.rows = new Map(); // "<thing id>\n<property>" -> {update}
    this.cardEls = new Map(); // thing id -> <article>
    this.rendered = false;
    client.onChange((kind, id, name, value) => {
      if (kind === "things") this.rendered && this.render();
      else if (kind === "value") this.rows.get(`${id}\n${name}`)?.update(value);
      else if (kind === "connection") this.#connection(id, value);
    });
  }

  async show() {
    if (!this.rendered) this.root.dataset.state = "loading";
    try {
      await this.client.refresh();
      if (!this.rendered) this.render();
      this.root.dataset.state = "ready";
    } catch (err) {
      this.root.dataset.state = "error";
      const p = el("p", { class: "empty", role: "alert" });
      p.textContent = `Cannot load the things: ${err.message}`;
      this.root.replaceChildren(p);
    }
  }

  render() {
    this.rendered = true;
    this.rows.clear();
    this.cardEls.clear();
    const things = this.pick([...this.client.things.values()]);
    const cards = things.map((thing) => {
      const article = this.card(thing, (name, options) => {
        const row = propertyRow(this.client, thing, name, thing.properties[name], `t-${thing.id}`, options);
        this.rows.set(`${thing.id}\n${name}`, row);
        return row.element;
      });
      this.cardEls.set(thing.id, article);
      return article;
    });
    if (!cards.length) {
      const p = el("p", { class: "empty" });
      p.textContent = this.empty;
      cards.push(p);
    }
    this.root.replaceChildren(...cards);
    for (const [id, connected] of this.client.connected) this.#connection(id, connected);
  }

  #connection(id, connected) {
    const article = this.cardEls.get(id);
    if (!article) return;
    article.classList.toggle("offline", !connected);
    article.querySelector(".link").textContent = connected ? "" : "Reconnecting…";
  }
}

export function thingHeader(thing, subtitle) {
  const header = el("header");
  const h2 = el("h2", { id: `t-${thing.id}` });
  h2.textContent = thing.title;
  const sub = el("p", { class: "types" });
  sub.textContent = subtitle;
  const link = el("p", { class: "link" });
  header.append(h2, sub, link);
  return header;
}

// Lights, plugs and anything else one can switch or set first, then sensors; alphabetical within each.
function byControl(things) {
  const writable = (t) => Object.values(t.properties ?? {}).some((p) => !p.readOnly);
  return things.sort((a, b) => writable(b) - writable(a) || a.title.localeCompare(b.title));
}

// Things other than rules when the page has a Rules section; every thing otherwise.
export function thingsView(root, client, rulesShownElsewhere) {
  return new ThingCards(root, client, {
    pick: (things) => byControl(things.filter((t) => !(rulesShownElsewhere && isRule(t)))),
    empty: "The hub has no things yet. Devices appear here as their sources find them (docs/things.md).",
    card: (thing, row) => {
      const article = el("article", { class: "thing", "aria-labelledby": `t-${thing.id}`, "data-thing": thing.id });
      const types = (thing["@type"] ?? []).map(typeWords).join(" · ");
      const props = el("div", { class: "props" });
      props.append(...Object.keys(thing.properties ?? {}).map((name) => row(name)));
      article.append(thingHeader(thing, types), props);
      return article;
    },
  });
}

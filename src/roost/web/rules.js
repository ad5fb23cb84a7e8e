// Rules: every rule is a thing of @type "Rule" (docs/rules.md) with its sentence as the description, a writable
// `enabled`, a read-only `last_run` and the rule's own properties (a wake time, ...).

import { el } from "./overview.js";
import { isRule, ThingCards, thingHeader } from "./things.js";

export function rulesView(root, client) {
  return new ThingCards(root, client, {
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
      article.append(thingHeader(thing, ""), sentence, props);
      return article;
    },
  });
}

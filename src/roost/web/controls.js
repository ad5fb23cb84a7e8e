// A thing's property on screen: a switch for a writable boolean, a slider for a writable number with a minimum
// and a maximum, a field for other writable values, plain text for read-only ones. Writes go through the Web
// Thing API; when the hub refuses one, its message appears next to the control and the control shows the value
// the thing really has.

import { number, thingUnit, words } from "./metrics.js";
import { el } from "./overview.js";

// `labelledBy` is the id of the thing's title: controls are named "<thing> <property>" ("Lounge Lamp On").
// `empty` is what a read-only value that is not there says ("never" for a rule's last run).
export function propertyRow(client, thing, name, spec, labelledBy, { empty = "—" } = {}) {
  const base = `p-${thing.id}-${name}`.replace(/[^\w-]/g, "_");
  const kind = spec.readOnly ? "text"
    : spec.type === "boolean" ? "switch"
    : isNumber(spec) && spec.minimum != null && spec.maximum != null ? "range"
    : "field";
  const row = el("div", { class: `prop prop-${kind}`, "data-property": name });
  const label = el(kind === "range" || kind === "field" ? "label" : "span", { class: "prop-label", id: `${base}-label` });
  // A source that gives no title repeats the name ("apparent_power_va"): show that as words.
  label.textContent = !spec.title || spec.title === name ? words(name) : spec.title;
  const msg = el("p", { class: "msg", id: `${base}-msg`, "aria-live": "polite" });
  const names = `${labelledBy} ${base}-label`;
  const control = { text, switch: switchControl, range: rangeControl, field: fieldControl }[kind](spec, base, names, empty);
  if (control.input) control.input.setAttribute("aria-describedby", msg.id);
  if (kind === "range" || kind === "field") label.setAttribute("for", control.input.id);
  row.append(label, control.element, msg);

  // While a write is under way or the slider is held, pushed values wait: the write's answer is newer.
  let writing = false;
  const show = (value) => {
    row.dataset.value = value === undefined ? "" : JSON.stringify(value);
    control.show(value);
  };
  control.onWrite?.(async (value) => {
    writing = true;
    row.setAttribute("aria-busy", "true");
    try {
      const now = await client.set(thing.id, name, value);
      msg.textContent = "";
      row.classList.remove("failed");
      control.input.removeAttribute("aria-invalid");
      show(now);
    } catch (err) {
      msg.textContent = err.message;
      row.classList.add("failed");
      control.input.setAttribute("aria-invalid", "true");
      show(client.value(thing.id, name));
    } finally {
      writing = false;
      row.removeAttribute("aria-busy");
    }
  });
  control.onRelease?.(() => writing || show(client.value(thing.id, name)));
  show(client.value(thing.id, name));
  return { element: row, update: (value) => writing || control.held?.() || show(value) };
}

function isNumber(spec) {
  return spec.type === "number" || spec.type === "integer";
}

export function formatValue(spec, value, empty = "—") {
  if (value === undefined || value === null || value === "") return empty;
  if (spec.type === "boolean") return spec["@type"] === "OnOffProperty" ? (value ? "On" : "Off") : value ? "Yes" : "No";
  if (isNumber(spec) && typeof value === "number") {
    const { unit, decimals } = thingUnit(spec);
    const text = number(value, Number.isInteger(value) && spec.type !== "number" ? 0 : decimals);
    return unit ? `${text}\u00a0${unit}` : text;
  }
  if (typeof value === "string" && /^\d{4}-\d\d-\d\dT\d\d:\d\d/.test(value)) {
    const when = new Date(value);
    if (!Number.isNaN(when.getTime())) return when.toLocaleString(undefined, { dateStyle: "medium", timeStyle: "short" });
  }
  return typeof value === "object" ? JSON.stringify(value) : String(value);
}

function text(spec, _base, _names, empty) {
  const out = el("span", { class: "prop-value" });
  return { element: out, show: (value) => { out.textContent = formatValue(spec, value, empty); } };
}

// A real button with role=switch: Space and Enter toggle it, and screen readers say "on"/"off".
function switchControl(spec, base, names) {
  const button = el("button", { type: "button", role: "switch", class: "switch", id: `${base}-control`, "aria-labelledby": names, "aria-checked": "false" });
  button.append(el("span", { class: "knob", "aria-hidden": "true" }));
  return {
    element: button,
    input: button,
    show: (value) => button.setAttribute("aria-checked", String(value === true)),
    onWrite: (write) => button.addEventListener("click", () => {
      const next = button.getAttribute("aria-checked") !== "true";
      button.setAttribute("aria-checked", String(next)); // at once; the hub's answer confirms or corrects it
      write(next);
    }),
  };
}

// Dragging shows the value as it goes and writes once, on release (arrow keys write each step).
function rangeControl(spec, base, names) {
  const { unit } = thingUnit(spec);
  const wrap = el("div", { class: "range-control" });
  const step = spec.type === "integer" ? 1 : (spec.maximum - spec.minimum) / 100;
  const input = el("input", {
    type: "range", id: `${base}-control`, min: spec.minimum, max: spec.maximum, step, "aria-labelledby": names,
  });
  const output = el("output", { for: input.id, class: "prop-value" });
  wrap.append(input, output);
  const label = () => {
    const text = formatValue(spec, Number(input.value));
    output.textContent = text;
    input.setAttribute("aria-valuetext", text);
  };
  input.addEventListener("input", label);
  return {
    element: wrap,
    input,
    show: (value) => {
      if (typeof value === "number") input.value = String(value);
      label();
      if (typeof value !== "number") output.textContent = "—";
    },
    onWrite: (write) => input.addEventListener("change", () => write(spec.type === "integer" ? Math.round(Number(input.value)) : Number(input.value))),
    held: () => input.matches(":active"),
    // After a drag that ends where it began there is no write: show what was pushed meanwhile.
    onRelease: (release) => input.addEventListener("pointerup", () => setTimeout(release)),
  };
}

// Other writable values (a rule's wake time, a number without a range, an enum): written on Enter or when the
// field loses focus.
function fieldControl(spec, base, names) {
  let input;
  if (Array.isArray(spec.enum)) {
    input = el("select", { id: `${base}-control`, "aria-labelledby": names });
    input.append(...spec.enum.map((v) => Object.assign(el("option", { value: JSON.stringify(v) }), { textContent: String(v) })));
  } else {
    input = el("input", { id: `${base}-control`, type: isNumber(spec) ? "number" : "text", "aria-labelledby": names });
    if (isNumber(spec)) input.setAttribute("step", spec.type === "integer" ? "1" : "any");
  }
  const { unit } = thingUnit(spec);
  const wrap = el("div", { class: "field-control" });
  wrap.append(input);
  if (unit) wrap.append(Object.assign(el("span", { class: "unit", "aria-hidden": "true" }), { textContent: unit }));
  const parse = () => {
    if (input.tagName === "SELECT") return JSON.parse(input.value);
    if (isNumber(spec) && input.value.trim() !== "" && Number.isFinite(Number(input.value))) return Number(input.value);
    return input.value; // the hub says what is wrong with it
  };
  return {
    element: wrap,
    input,
    show: (value) => {
      if (document.activeElement === input) return; // never overwrite what someone is typing
      if (input.tagName === "SELECT") input.value = JSON.stringify(value);
      else input.value = value == null ? "" : typeof value === "object" ? JSON.stringify(value) : String(value);
    },
    onWrite: (write) => input.addEventListener("change", () => write(parse())),
  };
}

// What a metric name means on screen: a title, a unit and how many decimals a reading deserves.
// Known names first; any other name is read from its unit suffix (Prometheus naming: `<what>_<unit>`).

const UNITS = [
  ["_celsius", "°C", 1],
  ["_percent", "%", 0],
  ["_hpa", "hPa", 0],
  ["_watts", "W", 0],
  ["_kwh", "kWh", 1],
  ["_volts", "V", 1],
  ["_amperes", "A", 2],
  ["_lux", "lx", 0],
  ["_ppm", "ppm", 0],
  ["_va", "VA", 0],
  ["_var", "var", 0],
  ["_hertz", "Hz", 1],
];

const TITLES = {
  temperature_celsius: "Temperature",
  humidity_percent: "Humidity",
  pressure_hpa: "Pressure",
  power_watts: "Power",
  energy_kwh_total: "Energy",
  linkquality: "Link quality",
};

// Unitless metrics that are whole numbers (zigbee2mqtt's link quality is 0–255).
const WHOLE = new Set(["linkquality"]);

export function describe(metric) {
  const base = metric.replace(/_total$/, "");
  const [suffix, unit, decimals] = UNITS.find(([s]) => base.endsWith(s)) ?? ["", "", WHOLE.has(base) ? 0 : 2];
  const title = TITLES[metric] ?? words(base.slice(0, base.length - suffix.length) || base);
  return { metric, title, unit, decimals };
}

export function words(name) {
  const text = name.replace(/[_-]+/g, " ").trim();
  return text.charAt(0).toUpperCase() + text.slice(1);
}

const formats = new Map();

export function number(value, decimals) {
  if (value == null || !Number.isFinite(value)) return "—";
  let f = formats.get(decimals);
  if (!f) {
    f = new Intl.NumberFormat(undefined, { minimumFractionDigits: decimals, maximumFractionDigits: decimals });
    formats.set(decimals, f);
  }
  return f.format(value);
}

// A no-break space keeps "21.4 °C" on one line.
export function withUnit(value, info) {
  const text = number(value, info.decimals);
  return info.unit && text !== "—" ? `${text}\u00a0${info.unit}` : text;
}

// Colour-blind-safe (Okabe–Ito) with enough contrast on white for 2 px lines and small dots.
export const PALETTE = ["#0072B2", "#D55E00", "#009E73", "#CC79A7", "#8A6D00", "#56B4E9", "#5E5E5E"];

// The name a series is shown by: its room, else its meter, else the whole series text.
export function seriesName(labels, fallback) {
  const name = labels.room ?? labels.meter ?? labels.device;
  return name ? words(name) : fallback;
}

// Web Thing units (docs/things.md) as symbols, with the decimals a reading in that unit deserves.
const THING_UNITS = {
  "degree celsius": ["°C", 1],
  percent: ["%", 0],
  hectopascal: ["hPa", 0],
  watt: ["W", 0],
  "volt ampere": ["VA", 0],
  "volt ampere reactive": ["var", 0],
  "kilowatt hour": ["kWh", 1],
  volt: ["V", 1],
  ampere: ["A", 2],
  lux: ["lx", 0],
  ppm: ["ppm", 0],
  hertz: ["Hz", 1],
  milliseconds: ["ms", 0],
};

export function thingUnit(property) {
  const [unit, decimals] = THING_UNITS[property.unit] ?? [property.unit ?? "", 2];
  return { unit, decimals: property.type === "integer" ? 0 : decimals };
}

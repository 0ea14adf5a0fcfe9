// Small DOM helpers: text only (never innerHTML), so data from the API cannot become markup.
export function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === undefined || v === null || v === false) continue;
    if (k === "class") el.className = v;
    // CSSOM, not a style attribute: the page's CSP allows no inline style attributes
    else if (k === "style") el.style.cssText = v;
    else if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
    else el.setAttribute(k, v === true ? "" : String(v));
  }
  append(el, children);
  return el;
}

export function append(el, children) {
  for (const c of children.flat()) {
    if (c === undefined || c === null || c === false) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return el;
}

const SVG = "http://www.w3.org/2000/svg";
export function s(tag, attrs = {}, ...children) {
  const el = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v !== undefined && v !== null) el.setAttribute(k, String(v));
  }
  for (const c of children.flat()) {
    if (c === undefined || c === null) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return el;
}

export function usd(v) {
  if (v === null || v === undefined) return "–";
  const a = Math.abs(v);
  const digits = a >= 1 || a === 0 ? 2 : a >= 0.01 ? 4 : 6;
  return "$" + Number(v).toLocaleString("en-US", {
    minimumFractionDigits: 2, maximumFractionDigits: digits });
}

export function when(iso) {
  if (!iso) return "–";
  const d = new Date(iso);
  return d.toISOString().replace("T", " ").replace(/\.\d+Z$/, "Z");
}

export function pct(v) {
  return v === null || v === undefined ? "–" : `${(v * 100).toFixed(1)} %`;
}

export function badge(state, text) {
  return h("span", { class: `badge s-${state}` }, text || state.replace("_", " "));
}

export function table(caption, columns, rows) {
  // columns: [{ label, num?, cell(row) -> node|string }]
  // in a box of its own that scrolls sideways: a table wider than a phone's window made the
  // whole page scroll sideways, the status line and the view's header out of sight
  return h("div", { class: "table-scroll" }, h("table", {},
    h("caption", { class: "caption" }, caption),
    h("thead", {}, h("tr", {}, columns.map(c =>
      h("th", { scope: "col", class: c.num ? "num" : undefined }, c.label)))),
    h("tbody", {}, rows.map(r => h("tr", c0(r), columns.map(c =>
      h("td", { class: c.num ? "num" : undefined }, c.cell(r))))))));
}

function c0(row) { return row && row.__attrs ? row.__attrs : {}; }

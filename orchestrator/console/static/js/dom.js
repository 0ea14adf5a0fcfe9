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

// Replace a view's content with a redraw, keeping what the user did in it: the element that
// had the focus (found again by its id, link or summary), the <details> they opened, how far
// each table box was scrolled sideways. Views are redrawn every few seconds or at each
// event: each redraw threw a keyboard user's focus out of the list (the next Tab started
// again at its first row), closed the spend table they had opened, and scrolled a phone's
// table back to its first column.
export function swap(container, ...nodes) {
  const active = document.activeElement;
  const focused = active && active !== container && container.contains(active)
    ? focusKey(active) : null;
  const open = new Set([...container.querySelectorAll("details")]
    .filter(d => d.open).map(detailsKey));
  const scrolled = [...container.querySelectorAll(".table-scroll")].map(b => b.scrollLeft);
  container.replaceChildren(...nodes);
  for (const d of container.querySelectorAll("details")) if (open.has(detailsKey(d))) d.open = true;
  container.querySelectorAll(".table-scroll").forEach((b, i) => {
    if (scrolled[i]) b.scrollLeft = scrolled[i];
  });
  if (focused) {
    [...container.querySelectorAll("[id], a[href], summary")].find(e => focusKey(e) === focused)
      ?.focus({ preventScroll: true });
  }
}

function focusKey(el) {
  if (el.id) return `#${el.id}`;
  if (el.tagName === "A" && el.hasAttribute("href")) return `a ${el.getAttribute("href")}`;
  return el.tagName === "SUMMARY" ? `summary ${el.textContent}` : null;
}

function detailsKey(d) { return d.querySelector("summary")?.textContent || ""; }

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

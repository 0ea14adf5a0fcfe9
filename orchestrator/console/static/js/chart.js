// A stacked bar chart in inline SVG: one bar per time bucket, one segment per series.
import { s, h, usd } from "./dom.js";

export const PALETTE = ["#0b5cad", "#e36209", "#1a7f37", "#8250df", "#cf222e", "#0598a8",
  "#9a6700", "#bf3989", "#57606a", "#2da44e"];

// Drawn `width` units wide (the CSS pixels it will take; 960 at most, scaled up beyond): drawn
// 960 wide always, a phone's 340 px shrank its 11-12 px axis labels to 4 px, unreadable.
export function stackedBars({ buckets, series, values, label, width = 960 }) {
  // buckets: [{key, label}], series: [name], values: Map(bucketKey -> Map(series -> usd))
  const W = Math.round(Math.min(Math.max(width || 960, 280), 960)), H = 320, L = 64, B = 40,
    T = 12, R = 8;
  const totals = buckets.map(b => series.reduce((a, n) => a + (values.get(b.key)?.get(n) || 0), 0));
  const max = Math.max(...totals, 0) || 1;
  const bw = (W - L - R) / Math.max(buckets.length, 1);
  const y = v => T + (H - T - B) * (1 - v / max);
  const svg = s("svg", { viewBox: `0 0 ${W} ${H}`, class: "chart", role: "img",
    "aria-label": label, preserveAspectRatio: "xMidYMid meet" });
  for (const f of [0, 0.5, 1]) {
    const v = max * f;
    svg.append(s("line", { x1: L, x2: W - R, y1: y(v), y2: y(v), stroke: "#d0d7de" }),
      s("text", { x: L - 6, y: y(v) + 4, "text-anchor": "end", "font-size": 12, fill: "#57606a" },
        usd(v)));
  }
  // at most 12 bucket labels, and one per 56 units (a label "11-24" is about 30 wide)
  const every = Math.ceil(buckets.length / Math.max(1, Math.min(12, Math.floor((W - L - R) / 56))));
  buckets.forEach((b, i) => {
    let base = 0;
    series.forEach((n, j) => {
      const v = values.get(b.key)?.get(n) || 0;
      if (v <= 0) return;
      const r = s("rect", { x: L + i * bw + bw * 0.12, width: bw * 0.76, y: y(base + v),
        height: Math.max(y(base) - y(base + v), 1), fill: PALETTE[j % PALETTE.length] },
        s("title", {}, `${b.label} · ${n}: ${usd(v)}`));
      svg.append(r);
      base += v;
    });
    if (i % every === 0) {
      svg.append(s("text", { x: L + i * bw + bw / 2, y: H - B + 16, "text-anchor": "middle",
        "font-size": 11, fill: "#57606a" }, b.label));
    }
  });
  return svg;
}

export function legend(series) {
  return h("ul", { class: "legend", "aria-label": "Legend" }, series.map((n, j) =>
    h("li", {}, h("span", { class: "sw", style: `background:${PALETTE[j % PALETTE.length]}`,
      "aria-hidden": "true" }), n)));
}

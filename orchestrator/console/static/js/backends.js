// Backends (GET /v1/backends): breaker, strikes, observed success rate and latency, slots in
// use and jobs waiting. Polled every 3 s.
import { call } from "./api.js";
import { h, badge, pct, swap, table, when } from "./dom.js";

export function backendsView(ctx) {
  const body = h("div", { id: "backends-body" });
  ctx.main.append(h("h2", {}, "Backends"), body);
  async function load() {
    const { backends } = await call("/v1/backends");
    for (const b of backends) b.__attrs = { "data-backend": b.name, "data-breaker": b.breaker.state };
    swap(body, table(`${backends.length} backends, polled`, [
      { label: "Backend", cell: b => h("span", { class: "mono" }, b.name) },
      { label: "Kinds", cell: b => b.kinds.join(", ") },
      { label: "Tier", cell: b => b.tier },
      { label: "Breaker", cell: b => h("span", {}, badge(b.breaker.state),
        b.breaker.retry_at ? h("span", { class: "muted" }, ` until ${when(b.breaker.retry_at)}`) : null) },
      { label: "Strikes", num: true, cell: b => b.breaker.strikes },
      { label: "Success rate", num: true, cell: b => pct(b.success_rate) },
      { label: "Latency", num: true, cell: b => (b.latency_ms === null ? "–" : `${Math.round(b.latency_ms)} ms`) },
      { label: "In flight", num: true, cell: b => `${b.in_flight} / ${b.max_concurrency}` },
      { label: "Waiting", num: true, cell: b => b.waiting },
    ], backends));
    ctx.setStatus(`backends updated ${new Date().toLocaleTimeString()}`);
  }
  ctx.every(3000, load);
}

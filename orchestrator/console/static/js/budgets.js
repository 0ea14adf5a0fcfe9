// Budgets (GET /v1/budgets): committed and held against the limit, forecast to the period's
// end, alert thresholds. Refreshed every 5 s.
import { call } from "./api.js";
import { h, usd, pct, swap, when } from "./dom.js";

function clamp(fraction) { return Math.min(Math.max(fraction, 0), 1); }
function place(el, fraction) { el.style.left = `${clamp(fraction) * 100}%`; }

// A mark inside the bar (a tick, the forecast line), shifted back by as much of its own width
// as it is along the bar: inside the bar's edges at 0 and at 100 %, centred at 50 %. Placed
// at 100 % as it was, an alert tick (or a forecast past the limit) was drawn just past the
// bar's right edge, which clips what overflows it: only the tick's label showed.
function mark(el, fraction) {
  place(el, fraction);
  el.style.transform = `translateX(${-clamp(fraction) * 100}%)`;
}

function meter(b) {
  const limit = b.limit_usd || 0;
  const frac = v => (limit > 0 ? v / limit : 0);
  const committed = h("div", { class: "committed" });
  committed.style.width = `${Math.min(frac(b.committed_usd), 1) * 100}%`;
  const held = h("div", { class: "held" });
  place(held, frac(b.committed_usd));
  held.style.width = `${Math.max(Math.min(frac(b.held_usd), 1 - frac(b.committed_usd)), 0) * 100}%`;
  const text = `${usd(b.committed_usd)} committed and ${usd(b.held_usd)} held of ${usd(limit)}`;
  const bar = h("div", { class: "meter", role: "meter", "aria-label": `Use of ${b.scope} ${b.period}`,
    "aria-valuemin": 0, "aria-valuemax": limit, "aria-valuenow": b.committed_usd,
    "aria-valuetext": text, "data-committed": b.committed_usd, "data-held": b.held_usd },
    committed, held);
  const wrap = h("div", { class: "meter-wrap" }, bar);
  for (const t of b.alert_thresholds) {
    const tick = h("div", { class: "tick", title: `alert at ${pct(t)}` });
    mark(tick, t);
    bar.append(tick);
    const label = h("span", { class: "ticklabel", "aria-hidden": "true" }, `${Math.round(t * 100)}%`);
    place(label, t);
    wrap.append(label);
  }
  if (b.forecast_usd !== null && limit > 0) {
    const f = h("div", { class: "forecast", title: `forecast ${usd(b.forecast_usd)}` });
    mark(f, frac(b.forecast_usd));
    bar.append(f);
  }
  return wrap;
}

function card(b) {
  const over = b.forecast_usd !== null && b.forecast_usd > b.limit_usd;
  return h("article", { class: "card", "data-scope": b.scope, "data-period": b.period },
    h("h3", {}, `${b.scope} · ${b.period}`),
    meter(b),
    h("dl", { class: "figures" },
      h("dt", {}, "Limit"), h("dd", {}, usd(b.limit_usd)),
      h("dt", {}, "Committed"), h("dd", { class: "committed-usd" }, `${usd(b.committed_usd)} (${pct(b.limit_usd ? b.committed_usd / b.limit_usd : 0)})`),
      h("dt", {}, "Held"), h("dd", {}, usd(b.held_usd)),
      h("dt", {}, "Remaining"), h("dd", {}, usd(b.remaining_usd)),
      h("dt", {}, "Forecast at period end"), h("dd", { class: over ? "s-failed" : undefined },
        b.forecast_usd === null ? "not enough data yet" : `${usd(b.forecast_usd)}${over ? " (over the limit)" : ""}`),
      h("dt", {}, "Alerts at"), h("dd", {}, b.alert_thresholds.map(pct).join(", ") || "none"),
      h("dt", {}, "Forecast alerts at"), h("dd", {}, b.forecast_thresholds.map(pct).join(", ") || "none"),
      h("dt", {}, "Period"), h("dd", {}, `${when(b.period_start)} → ${b.period_end ? when(b.period_end) : "open"}`)));
}

export function budgetsView(ctx) {
  const body = h("div", { class: "cards", id: "budget-cards" });
  ctx.main.append(h("h2", {}, "Budgets"),
    h("p", { class: "muted" }, "Bars: committed (solid) and held for running jobs (striped) against the limit; ticks: alert thresholds; red line: forecast at the end of the period."),
    body);
  async function load() {
    const { budgets } = await call("/v1/budgets");
    const own = ctx.tenant ? `tenant:${ctx.tenant}` : null;
    const shown = budgets.filter(b => !own || b.scope === own || b.scope.startsWith(own + "/"));
    swap(body, ...(shown.length ? shown.map(card)
      : [h("p", {}, "No budget covers this tenant.")]));
    ctx.setStatus(`budgets updated ${new Date().toLocaleTimeString()}`);
  }
  ctx.every(5000, load);
}

// Spend over time, stacked by backend, tier or project: one cost report (GET
// /v1/reports/costs) per day or hour bucket, so the figures are the ledger's, exactly.
import { call } from "./api.js";
import { h, usd, swap, table } from "./dom.js";
import { stackedBars, legend } from "./chart.js";
import { serially } from "./live.js";

const HOUR = 3600e3, DAY = 24 * HOUR;

function bucketsFor(unit) {
  const now = Date.now();
  if (unit === "hour") {
    const end = Math.floor(now / HOUR) * HOUR + HOUR;
    return Array.from({ length: 24 }, (_, i) => {
      const from = new Date(end - (24 - i) * HOUR);
      return { key: from.toISOString(), from, to: new Date(from.getTime() + HOUR),
        label: from.toISOString().slice(11, 16) };
    });
  }
  const end = Math.floor(now / DAY) * DAY + DAY;
  return Array.from({ length: 14 }, (_, i) => {
    const from = new Date(end - (14 - i) * DAY);
    return { key: from.toISOString(), from, to: new Date(from.getTime() + DAY),
      label: from.toISOString().slice(5, 10) };
  });
}

export function spendView(ctx) {
  const state = { unit: "day", by: "backend" };
  const unit = h("select", { id: "spend-unit" },
    h("option", { value: "day" }, "Day (last 14)"), h("option", { value: "hour" }, "Hour (last 24)"));
  const by = h("select", { id: "spend-by" },
    ["backend", "tier", "project"].map(g => h("option", { value: g }, g)));
  const body = h("div", { id: "spend-body", "aria-busy": "true" });
  ctx.main.append(
    h("h2", {}, "Spend over time"),
    h("div", { class: "toolbar" },
      h("label", { for: "spend-unit" }, "Per", unit),
      h("label", { for: "spend-by" }, "Stacked by", by)),
    body);
  unit.addEventListener("change", () => { state.unit = unit.value; load(); });
  by.addEventListener("change", () => { state.by = by.value; load(); });

  // One load at a time, the next reading the choices made meanwhile: two loads in flight
  // could end in either order, and the first one asked drew over the last one.
  const inTurn = serially(ctx);
  const load = () => inTurn("", draw);

  async function draw() {
    const { unit: per, by: group } = state;  // what this draw shows, whatever changes meanwhile
    const buckets = bucketsFor(per);
    body.setAttribute("aria-busy", "true");
    const reports = await Promise.all(buckets.map(b => call("/v1/reports/costs", { params: {
      group_by: group, from: b.from.toISOString(), to: b.to.toISOString(),
      tenant: ctx.tenant || undefined } })));
    const values = new Map(), names = new Map();
    let total = 0, jobs = 0;
    reports.forEach((rep, i) => {
      const m = new Map();
      for (const g of rep.groups) {
        const name = g.key === null ? "(none)" : g.key;
        m.set(name, (m.get(name) || 0) + g.cost_usd);
        names.set(name, (names.get(name) || 0) + g.cost_usd);
      }
      values.set(buckets[i].key, m);
      total += rep.total_usd;
      jobs += rep.jobs;
    });
    const series = [...names.keys()].sort((a, b) => names.get(b) - names.get(a));
    const who = ctx.me.admin ? (ctx.tenant ? `tenant ${ctx.tenant}` : "all tenants")
      : `tenant ${ctx.me.tenant}`;
    const label = `Spend per ${per} (UTC) by ${group}, ${who}: ${usd(total)} in total`;
    swap(body,
      h("p", { id: "spend-total" }, `${usd(total)} over ${jobs} charged jobs (${who}).`),
      stackedBars({ buckets, series, values, label, width: body.clientWidth }),
      legend(series),
      h("details", {}, h("summary", {}, "Show as a table"),
        table(label, [
          { label: `${per} (UTC)`, cell: b => b.label },
          ...series.map(n => ({ label: n, num: true, cell: b => usd(values.get(b.key).get(n) || 0) })),
        ], buckets)));
    body.dataset.by = group;
    body.setAttribute("aria-busy", "false");
    ctx.setStatus(`spend updated ${new Date().toLocaleTimeString()}`);
  }
  ctx.every(30000, load);
}

// Jobs (GET /v1/jobs): status filtered by the API, kind and backend here. Live from the
// tenant's event feed (GET /v1/events: the jobs of its events are re-read in batches, at most
// once a second, see BATCH_MS), polled every 3 s when there is none. An admin sees the chosen
// tenant's jobs, or every tenant's (one list per tenant, merged); the feed is the caller's own
// tenant's, so an admin looking at other tenants is polled.
import { call, ApiError } from "./api.js";
import { batched, follow, serially } from "./live.js";
import { h, usd, when, badge, swap, table } from "./dom.js";

const STATUSES = ["", "queued", "running", "succeeded", "failed", "cancelled"];
// A busy tenant's feed carries hundreds of events a second, and every read the console makes
// counts against the tenant's rate limit (ORCH_API_RATE_LIMIT, 100 a second by default),
// shared with its producers: one read per event would get their submissions refused (429).
// So the events' jobs are re-read at most once every BATCH_MS: 1 s keeps a final status
// within about a second of its event (the polled view takes up to 3 s). A few jobs are read
// on their own (GET /v1/jobs/{id}, small answers); past FEW_JOBS one list read (GET /v1/jobs,
// up to 200 jobs) is fewer requests. An open tab then asks at most FEW_JOBS a second, 5% of
// the default limit, however busy the feed.
const BATCH_MS = 1000;
const FEW_JOBS = 5;

export function jobHref(id, tenant) {
  return `#/job/${encodeURIComponent(id)}${tenant ? `?tenant=${encodeURIComponent(tenant)}` : ""}`;
}

async function fetchJobs(ctx, status, limit) {
  if (!ctx.me.admin || ctx.tenant) {
    const tenant = ctx.me.admin ? ctx.tenant : undefined;
    const { items } = await call("/v1/jobs", { params: { status, limit, tenant } });
    return items.map(j => ({ ...j, tenant: tenant || ctx.me.tenant }));
  }
  const lists = await Promise.all(ctx.tenants.map(t =>
    call("/v1/jobs", { params: { status, limit, tenant: t } })
      .then(r => r.items.map(j => ({ ...j, tenant: t })))));
  return lists.flat().sort((a, b) => b.created_at.localeCompare(a.created_at)).slice(0, limit);
}

export function jobsView(ctx) {
  const status = h("select", { id: "job-status" }, STATUSES.map(s => h("option", { value: s }, s || "any")));
  const kind = h("select", { id: "job-kind" }, ["", "video", "image", "text"].map(k => h("option", { value: k }, k || "any")));
  const backend = h("input", { id: "job-backend", type: "search", placeholder: "e.g. vid-draft" });
  const limit = h("select", { id: "job-limit" }, ["50", "100", "200"].map(n => h("option", { value: n }, n)));
  const body = h("div", { id: "jobs-body" });
  ctx.main.append(h("h2", {}, "Jobs"),
    h("form", { class: "toolbar", role: "search", "aria-label": "Filter jobs", onsubmit: e => e.preventDefault() },
      h("label", { for: "job-status" }, "Status", status),
      h("label", { for: "job-kind" }, "Kind", kind),
      h("label", { for: "job-backend" }, "Backend", backend),
      h("label", { for: "job-limit" }, "Newest", limit)),
    body);
  let last = [];
  function render() {
    const b = backend.value.trim();
    const rows = last.filter(j => (!kind.value || j.kind === kind.value)
      && (!b || (j.backend || "").includes(b) || j.attempts.some(a => a.backend.includes(b))));
    for (const j of rows) j.__attrs = { "data-job": j.id, "data-status": j.status };
    const cols = [
      { label: "Created", cell: j => when(j.created_at) },
      { label: "Job", cell: j => h("a", { href: jobHref(j.id, ctx.me.admin ? j.tenant : ""), class: "mono", "aria-label": `job ${j.id}`, title: j.id }, j.id.slice(0, 8)) },
      ...(ctx.me.admin ? [{ label: "Tenant", cell: j => j.tenant }] : []),
      { label: "Kind", cell: j => `${j.kind} · ${j.tier}` },
      { label: "Status", cell: j => badge(j.status) },
      { label: "Backend", cell: j => j.backend || "–" },
      { label: "Attempts", num: true, cell: j => j.attempts.length },
      { label: "Estimate", num: true, cell: j => usd(j.estimated_cost_usd) },
      { label: "Cost", num: true, cell: j => usd(j.cost_usd) },
    ];
    swap(body, rows.length ? table(`${rows.length} jobs, newest first`, cols, rows)
      : h("p", {}, "No job matches."));
  }
  const inTurn = serially(ctx);
  const load = () => inTurn("", async () => {
    last = await fetchJobs(ctx, status.value, Number(limit.value));
    render();
    ctx.setStatus(`jobs updated ${new Date().toLocaleTimeString()}`);
  });
  // one job's row from GET /v1/jobs/{id}: replaced, inserted (newest first) or, when it no
  // longer matches the status filter, taken out
  const refreshRow = id => inTurn(id, async () => {
    const tenant = ctx.me.admin ? ctx.tenant : undefined;
    let job = null;
    try {
      job = { ...await call(`/v1/jobs/${encodeURIComponent(id)}`, { params: { tenant } }),
              tenant: tenant || ctx.me.tenant };
    } catch (e) {
      if (!(e instanceof ApiError && e.status === 404)) throw e;
    }
    const rest = last.filter(j => j.id !== id);
    last = job && (!status.value || job.status === status.value) ? [job, ...rest] : rest;
    last.sort((a, b) => b.created_at.localeCompare(a.created_at));
    last = last.slice(0, Number(limit.value));
    render();
    ctx.setStatus(`job ${id.slice(0, 8)} updated ${new Date().toLocaleTimeString()}`);
  });
  status.addEventListener("change", load);
  limit.addEventListener("change", load);
  kind.addEventListener("change", render);
  backend.addEventListener("input", render);
  if (ctx.me.admin && ctx.tenant !== ctx.me.tenant) {
    ctx.every(3000, load);
  } else {
    const reread = batched(ctx, BATCH_MS, ids =>
      ids.length > FEW_JOBS ? load() : Promise.all(ids.map(refreshRow)));
    follow(ctx, "/v1/events", { ms: 3000, load, onEvent: msg => {
      const ev = JSON.parse(msg.data);
      if (ev.job_id) reread(ev.job_id);
    } });
  }
}

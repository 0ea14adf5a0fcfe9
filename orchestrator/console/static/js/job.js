// One job (GET /v1/jobs/{id}): its timeline (submitted, attempts, fail-overs, end), its
// route's reasons, cost against the estimate; cancel (POST /v1/jobs/{id}/cancel). Re-read at
// each of its events (GET /v1/jobs/{id}/events), polled every 2 s when there is no stream,
// until nothing more will change: the job has ended and none of its attempts is still open.
import { call, ApiError } from "./api.js";
import { follow, serially } from "./live.js";
import { h, usd, when, badge, swap, table } from "./dom.js";

const FINAL = new Set(["succeeded", "failed", "cancelled"]);

// Nothing more will change: the job has ended, and no attempt of it is still running at its
// provider. One still running when the job was cancelled (or passed its deadline) may be
// billed when it concludes (a late job.charged): the job's stream stays open for it, and the
// polls, which stopped at the job's end, now wait for it too.
function settled(job) {
  return FINAL.has(job.status) && job.attempts.every(a => a.outcome !== null);
}

function timeline(job) {
  const items = [h("li", {}, h("time", { datetime: job.created_at }, when(job.created_at)),
    `Submitted: ${job.kind}, tier ${job.tier}; ${usd(job.estimated_cost_usd)} held (the worst case of its plan)`)];
  job.attempts.forEach((a, i) => {
    const prev = job.attempts[i - 1];
    if (prev && prev.backend !== a.backend) {
      const why = prev.error ? `${prev.error.code}: ${prev.error.message}` : prev.outcome || "no answer";
      items.push(h("li", { class: "ev-failover" }, h("time", { datetime: a.started_at }, when(a.started_at)),
        `Failed over from ${prev.backend} to ${a.backend} (${why})`));
    }
    const outcome = a.outcome || "in flight";
    const cost = a.cost_usd !== null ? `, charged ${usd(a.cost_usd)}`
      : a.possible_cost_usd !== null ? `, may have cost up to ${usd(a.possible_cost_usd)}` : "";
    items.push(h("li", { class: a.outcome && a.outcome !== "succeeded" ? "ev-bad" : undefined },
      h("time", { datetime: a.started_at }, when(a.started_at)),
      `Attempt ${i + 1} on ${a.backend}: `, badge(a.outcome || "running", outcome), cost,
      a.error ? ` — ${a.error.code}: ${a.error.message}` : "",
      a.finished_at ? h("span", { class: "muted" }, ` (ended ${when(a.finished_at)})`) : ""));
  });
  if (job.finished_at) {
    items.push(h("li", { class: job.status === "succeeded" ? undefined : "ev-bad" },
      h("time", { datetime: job.finished_at }, when(job.finished_at)),
      `Finished `, badge(job.status), job.error ? ` — ${job.error.code}: ${job.error.message}` : ""));
  }
  return h("ol", { class: "timeline", "aria-label": "Timeline" }, items);
}

function costVsEstimate(job) {
  const max = Math.max(job.estimated_cost_usd || 0, job.cost_usd || 0) || 1;
  const bar = (v, cls) => { const b = h("div", { class: cls }); b.style.width = `${(v || 0) / max * 100}%`; return b; };
  const ratio = job.cost_usd !== null && job.estimated_cost_usd
    ? ` (${(job.cost_usd / job.estimated_cost_usd * 100).toFixed(1)} % of the estimate)` : "";
  return h("div", { class: "vs", role: "group", "aria-label": `Cost ${usd(job.cost_usd)} against the estimate ${usd(job.estimated_cost_usd)}${ratio}` },
    h("span", {}, "Estimate"), bar(job.estimated_cost_usd, "bar est"), h("span", { class: "num" }, usd(job.estimated_cost_usd)),
    h("span", {}, "Cost"), bar(job.cost_usd, "bar"), h("span", { class: "num", id: "job-cost" }, usd(job.cost_usd)),
    ratio ? h("span", { class: "muted ratio" }, ratio.trim()) : null);
}

function route(job) {
  const r = job.route;
  if (!r) return h("p", {}, "No route recorded.");
  return h("div", {},
    h("p", {}, `Strategy ${r.strategy}; worst case ${usd(r.worst_case_usd)}.`),
    table("Candidates, in the order tried", [
      { label: "Backend", cell: c => c.backend },
      { label: "Estimate", num: true, cell: c => usd(c.estimated_cost_usd) },
      { label: "Score", num: true, cell: c => c.score.toFixed(3) },
      { label: "Why", cell: c => c.reasons.join("; ") },
    ], r.candidates),
    r.excluded.length ? table("Left out", [
      { label: "Backend", cell: x => x.backend },
      { label: "Reason", cell: x => x.reason },
    ], r.excluded) : null);
}

export function jobView(ctx, id, tenant) {
  const params = tenant ? { tenant } : {};
  const body = h("div", { id: "job-body" });
  ctx.main.append(h("p", {}, h("a", { href: "#/jobs" }, "← All jobs")), body);
  async function cancel(btn) {
    if (!window.confirm("Cancel this job? What its provider already billed is still charged.")) return;
    btn.disabled = true;
    try {
      await call(`/v1/jobs/${encodeURIComponent(id)}/cancel`, { method: "POST", params });
      ctx.setStatus("cancel asked", "note");
    } catch (e) {
      ctx.setStatus(`cancel refused: ${e.message}`, "error");
    }
    await load();
    // not redrawn (the job could not be re-read): it would stay disabled for good
    btn.disabled = false;
    // The button had the focus; disabled, then gone with the job's end, it left the focus on
    // the page's top, and a keyboard user had to find their way back. The heading says what
    // became of the job; a refused cancel leaves the button, to try again. Not when the user
    // has moved on meanwhile.
    const active = document.activeElement;
    if (!active || active === document.body || active === btn || !active.isConnected) {
      (document.getElementById("cancel-job") || document.getElementById("job-title"))?.focus();
    }
  }
  const inTurn = serially(ctx);
  const load = () => inTurn("job", loadNow);
  async function loadNow() {
    let job;
    try {
      job = await call(`/v1/jobs/${encodeURIComponent(id)}`, { params });
    } catch (e) {
      if (e instanceof ApiError && (e.status === 404 || e.status === 403 || e.status === 422)) {
        swap(body, h("h2", {}, "Job not found"), h("p", { role: "alert" }, e.message));
        ctx.setStatus("job not found");
        return true;
      }
      throw e;
    }
    const cancelBtn = FINAL.has(job.status) ? null
      : h("button", { type: "button", class: "danger", id: "cancel-job" }, "Cancel job");
    if (cancelBtn) cancelBtn.addEventListener("click", () => cancel(cancelBtn));
    swap(body, ...[
      h("h2", { id: "job-title", tabindex: "-1" }, "Job ", h("span", { class: "mono" }, job.id), " ",
        badge(job.status)),
      h("p", {}, `${job.kind} · tier ${job.tier}${job.backend ? ` · on ${job.backend}` : ""}`,
        job.metadata && job.metadata.project ? ` · project ${job.metadata.project}` : "",
        tenant ? ` · tenant ${tenant}` : ""),
      cancelBtn,
      h("div", { class: "split" },
        h("section", { "aria-labelledby": "tl" }, h("h3", { id: "tl" }, "Timeline"), timeline(job)),
        h("section", { "aria-labelledby": "cv" }, h("h3", { id: "cv" }, "Cost against the estimate"),
          costVsEstimate(job), h("h3", {}, "Route"), route(job)))].filter(Boolean));
    ctx.setStatus(`job updated ${new Date().toLocaleTimeString()}`);
    return settled(job);
  }
  // the job's stream is its owner's: an admin looking at another tenant's job polls
  if (tenant && tenant !== ctx.me.tenant) ctx.every(2000, load);
  else follow(ctx, `/v1/jobs/${encodeURIComponent(id)}/events`, { ms: 2000, load, onEvent: load });
}

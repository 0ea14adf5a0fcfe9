// The console's shell: sign-in, who the key is (GET /v1/whoami), the admin's tenant choice,
// and a hash router whose views poll the API (or follow its event stream) while shown.
import {
  ApiError, call, heldMs, storedKey, storeKey, forgetKey, whenUnauthorized,
} from "./api.js";
import { h } from "./dom.js";
import { spendView } from "./spend.js";
import { budgetsView } from "./budgets.js";
import { backendsView } from "./backends.js";
import { jobsView } from "./jobs.js";
import { jobView } from "./job.js";

const $ = id => document.getElementById(id);
const ctx = { me: null, tenant: "", tenants: [], timers: [], main: $("main") };
const TENANT = "orchestrator.console.tenant";

// `?poll=<seconds>` in the console's URL (before the #) sets every view's polling interval
const POLL_S = Number(new URLSearchParams(window.location.search).get("poll"));
ctx.pollMs = POLL_S >= 1 ? POLL_S * 1000 : null;

// The status line: the last update, and whether the view is updated "live" (from the API's
// event stream), by "polling", or no more ("ended": the job has finished and its last event,
// a late charge too, has come); data-updates says the same to scripts and tests.
//
// It is no live region: it changes at every poll ("… updated 12:00:03", every 2-5 s), and a
// screen reader announced each one. What matters is said once in #announce, a polite live
// region out of sight: an error (not again at each poll that meets the same one), the view
// updated again after one, an action's outcome ("cancel asked"), and a change of how the
// view is updated (live, polling, ended).
const MODES = { live: "live updates", polling: "polling", ended: "updates ended" };
let statusText = "";
let statusError = null;    // the error the status line shows (announced once)
let announcedMode = null;  // the mode last announced, or set quietly by a view's start

function statusLine() {
  const mode = $("status").dataset.updates;
  const line = mode ? `${statusText} · ${MODES[mode]}` : statusText;
  $("status").textContent = line;
  return line;
}

function announce(text) { $("announce").textContent = text; }

// kind: "update" (routine: shown, announced only as the first after an error), "error"
// (announced unless it is the one already shown), "note" (an action's outcome: announced)
ctx.setStatus = (text, kind = "update") => {
  if (!ctx.me && text) return; // a load that ends after sign-out leaves nothing behind
  statusText = text;
  const line = statusLine();
  if (!text) {
    statusError = null;
    announce("");
  } else if (kind === "error") {
    if (text !== statusError) announce(line);
    statusError = text;
  } else {
    if (kind === "note" || statusError !== null) announce(line);
    statusError = null;
  }
};
// quiet: a view's start (each view starts as "polling"), not a change to announce
ctx.setUpdates = (mode, quiet = false) => {
  if (mode) $("status").dataset.updates = mode; else delete $("status").dataset.updates;
  const line = statusLine();
  if (mode && mode !== announcedMode && !quiet) announce(line);
  announcedMode = mode;
};
// Run `fn` now (or after `wait` ms) and every `ms` (or `?poll=`) while its view is shown; a
// hidden tab skips the fetch (it catches up at the next tick once shown again). After a 429
// or a 503, the next run waits at least what its Retry-After asked (api.js's heldMs()). `fn`
// returning true means nothing more will change: it stops, and the status line says the
// updates ended. Returns a handle whose stop() ends it.
ctx.every = (ms, fn, { wait = 0 } = {}) => {
  const handle = { stopped: false, timer: null };
  handle.stop = () => { handle.stopped = true; clearTimeout(handle.timer); };
  const next = () => Math.max(ctx.pollMs || ms, heldMs());
  const run = async () => {
    if (handle.stopped) return;
    if (!document.hidden) {
      try {
        if ((await fn()) === true) {
          if (!handle.stopped) ctx.setUpdates("ended");
          return;
        }
      } catch (e) {
        // not a view left since; the wait said when the API asked for one
        const asked = heldMs() > 0 ? ` (trying again in ${Math.ceil(next() / 1000)} s)` : "";
        if (!handle.stopped) ctx.setStatus(`error: ${e.message}${asked}`, "error");
      }
    }
    if (!handle.stopped) handle.timer = setTimeout(run, next());
  };
  ctx.timers.push(handle);
  if (wait > 0) handle.timer = setTimeout(run, wait); else run();
  return handle;
};

// stops the view's polls and streams (live.js's follow() handles are in the same list)
function stopTimers() {
  for (const handle of ctx.timers) handle.stop();
  ctx.timers = [];
}

const VIEWS = { spend: spendView, budgets: budgetsView, backends: backendsView, jobs: jobsView };

// What a view is given: ctx, with a status line it writes to only while it is shown. A load
// still under way when its view was left (the spend view's 14 reports) wrote "spend updated"
// or its error over the next view's status, where the live jobs list (written to at its
// events only) kept it.
let shown = 0;
function viewCtx() {
  const mine = ++shown;
  const view = Object.create(ctx);
  view.setStatus = (text, kind) => { if (mine === shown) ctx.setStatus(text, kind); };
  view.setUpdates = (mode, quiet) => { if (mine === shown) ctx.setUpdates(mode, quiet); };
  return view;
}

function route() {
  if (!ctx.me) return;
  stopTimers();
  // a view that follows a stream says "live" once it is open
  ctx.setUpdates("polling", true);
  const hash = window.location.hash.replace(/^#\/?/, "") || "spend";
  const [path, query = ""] = hash.split("?");
  const [name, id] = path.split("/");
  ctx.main.replaceChildren();
  for (const a of document.querySelectorAll("nav a")) {
    const current = a.dataset.view === name || (name === "job" && a.dataset.view === "jobs");
    if (current) a.setAttribute("aria-current", "page"); else a.removeAttribute("aria-current");
  }
  const view = viewCtx();
  if (name === "job" && id) {
    const tenant = new URLSearchParams(query).get("tenant") || "";
    jobView(view, decoded(id), ctx.me.admin ? tenant : "");
  } else {
    (VIEWS[name] || spendView)(view);
  }
}

// A link's id as typed: a malformed escape (#/job/%E0) is asked for as it is, and the API's
// answer (not a job id) is shown, where decodeURIComponent threw and left the page blank.
function decoded(id) {
  try {
    return decodeURIComponent(id);
  } catch {
    return id;
  }
}

// Who the key is (and an admin's tenants), read first and shown only by signedIn(): a start
// superseded meanwhile (a key signed in since) changes nothing.
async function identify() {
  const me = await call("/v1/whoami");
  const keys = me.admin ? (await call("/v1/keys")).items : null;
  return { me, keys };
}

function signedIn({ me, keys }) {
  ctx.me = me;
  $("identity").textContent = ctx.me.admin
    ? `admin (${ctx.me.tenant}) · key ${ctx.me.prefix}` : `tenant ${ctx.me.tenant} · key ${ctx.me.prefix}`;
  if (ctx.me.admin) {
    ctx.tenants = [...new Set(keys.map(k => k.tenant))].sort();
    const select = $("tenant");
    select.replaceChildren(h("option", { value: "" }, "All tenants"),
      ...ctx.tenants.map(t => h("option", { value: t }, t)));
    ctx.tenant = ctx.tenants.includes(sessionStorage.getItem(TENANT)) ? sessionStorage.getItem(TENANT) : "";
    select.value = ctx.tenant;
    $("tenant-pick").hidden = false;
  } else {
    ctx.tenants = [ctx.me.tenant];
    ctx.tenant = "";
    $("tenant-pick").hidden = true;
  }
}

function show(signedIn) {
  $("signin").hidden = signedIn;
  $("who").hidden = !signedIn;
  $("nav").hidden = !signedIn;
  ctx.main.hidden = !signedIn;
}

function signOut(message = "") {
  clearTimeout(resumeTimer);
  starts++;  // a start still waiting for its answer signs nobody in
  stopTimers();
  forgetKey();
  sessionStorage.removeItem(TENANT);
  ctx.me = null;
  ctx.main.replaceChildren();
  // nothing of the session stays in the page, hidden or not: who it was, an admin's
  // tenants, the last update
  $("identity").textContent = "";
  $("tenant").replaceChildren(h("option", { value: "" }, "All tenants"));
  ctx.setUpdates(null);
  ctx.setStatus("");
  show(false);
  $("signin-error").textContent = message;
  $("key").value = "";
  $("key").focus();
}

// A reload (the key already stored) that the API cannot answer now (down, 429, 503) keeps
// the key and tries again: only a 401 or Sign out forgets it, and the key may not be at hand.
// It waits what the answer's Retry-After asks (a 429's rest of the rate window: asking
// sooner only counts against the tenant's limit again), else RESUME_RETRY_MS; never less (a
// busy API's "Retry-After: 1" is no cue to ask more often), nor more than RESUME_RETRY_MAX_MS
// (the failed-authentication window may be a day long; the page should not look dead).
const RESUME_RETRY_MS = 5000;
const RESUME_RETRY_MAX_MS = 300000;
let resumeTimer = null;
let starts = 0;  // the latest start decides: a retry answered after a new sign-in is dropped

function resumeDelay(e) {
  const asked = e instanceof ApiError ? e.retryAfterS : null;
  if (asked === null) return RESUME_RETRY_MS;
  return Math.min(Math.max(asked * 1000, RESUME_RETRY_MS), RESUME_RETRY_MAX_MS);
}

async function start(resumed = false) {
  clearTimeout(resumeTimer);
  const mine = ++starts;
  let found;
  try {
    found = await identify();
  } catch (e) {
    if (mine !== starts) return;
    if (resumed && e.status !== 401 && storedKey()) {
      ctx.me = null;
      show(false);
      const wait = resumeDelay(e);
      $("signin-error").textContent = `Cannot sign in: ${e.message} (trying again in `
        + `${Math.ceil(wait / 1000)} s)`;
      resumeTimer = setTimeout(() => start(true), wait);
      return;
    }
    signOut(e.status === 401 ? "That key was not accepted." : `Cannot sign in: ${e.message}`);
    return;
  }
  if (mine !== starts) return;
  signedIn(found);
  $("signin-error").textContent = "";
  show(true);
  route();
  ctx.main.focus();
}

whenUnauthorized(() => signOut("The key is no longer accepted; sign in again."));
$("signin-form").addEventListener("submit", e => {
  e.preventDefault();
  const key = $("key").value.trim();
  if (!key) return;
  storeKey(key);
  $("key").value = "";
  start();
});
$("signout").addEventListener("click", () => signOut());
$("tenant").addEventListener("change", e => {
  ctx.tenant = e.target.value;
  sessionStorage.setItem(TENANT, ctx.tenant);
  route();
});
window.addEventListener("hashchange", () => { route(); ctx.main.focus(); });

if (storedKey()) start(true); else show(false);

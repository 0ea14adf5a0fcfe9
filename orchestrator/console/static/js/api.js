// The public API, with the key from sessionStorage (never a URL, never localStorage).
const KEY = "orchestrator.console.key";

export class ApiError extends Error {
  // retryAfterS: what the answer's Retry-After asks, in seconds (null: it has none)
  constructor(status, code, message, retryAfterS = null) {
    super(message);
    this.status = status;
    this.code = code;
    this.retryAfterS = retryAfterS;
  }
}

// A Retry-After value in seconds: delay-seconds, or an HTTP date (RFC 9110 §10.2.3), which
// a proxy or a load balancer may send; null when there is none or it cannot be read.
export function retryAfterSeconds(value, now = Date.now()) {
  const v = (value || "").trim();
  if (!v) return null;
  if (/^\d+(\.\d+)?$/.test(v)) return Number(v);
  const at = Date.parse(v);
  return Number.isNaN(at) ? null : Math.max(0, (at - now) / 1000);
}

// How long the API asked to be left alone: the Retry-After of its last 429 (the tenant's rate
// window, which every request of the tenant counts against, this page's polls too) or 503
// (the API or a proxy busy or restarting). Polls and stream reconnections wait it out: asked
// sooner, they were refused again, and each refusal counted against the limit the tenant's
// producers share. At most HOLD_MAX_MS, so a Retry-After of a day does not leave a view dead.
export const HOLD_MAX_MS = 300000;
let holdUntil = 0;

function holdFor(status, retryAfterS) {
  if ((status !== 429 && status !== 503) || retryAfterS === null) return;
  holdUntil = Math.max(holdUntil, performance.now() + Math.min(retryAfterS * 1000, HOLD_MAX_MS));
}

// ms left of what the API last asked to wait (0: nothing asked, or it has passed)
export function heldMs() { return Math.max(0, holdUntil - performance.now()); }

export function storedKey() { return sessionStorage.getItem(KEY); }
export function storeKey(key) { sessionStorage.setItem(KEY, key); }
export function forgetKey() { sessionStorage.removeItem(KEY); }

// An answer that has not come (headers and body) within this is given up: an API or a
// proxy that holds a request, or a connection dead since the laptop slept, would otherwise
// leave a view waiting for ever, its last figures shown as if they were current.
export const CALL_TIMEOUT_MS = 30000;

let onUnauthorized = () => {};
export function whenUnauthorized(fn) { onUnauthorized = fn; }

// GET or POST a /v1 path; `params` become the query string (undefined/"" left out).
export async function call(path, { method = "GET", params = {}, body } = {}) {
  const url = new URL(path, window.location.origin);
  for (const [k, v] of Object.entries(params)) {
    if (v !== undefined && v !== null && v !== "") url.searchParams.set(k, v);
  }
  const key = storedKey();
  const headers = { Authorization: `Bearer ${key}`, Accept: "application/json" };
  if (body !== undefined) headers["Content-Type"] = "application/json";
  const ctrl = new AbortController();
  const timer = setTimeout(() => ctrl.abort(), CALL_TIMEOUT_MS);
  let resp;
  let data = null;
  try {
    try {
      resp = await fetch(url, {
        method, headers, body: body === undefined ? undefined : JSON.stringify(body),
        credentials: "omit", cache: "no-store", signal: ctrl.signal,
      });
    } catch {
      if (ctrl.signal.aborted) throw timedOut();
      // each browser words a network error its own way ("Failed to fetch", "NetworkError …")
      throw new ApiError(0, "unreachable", "cannot reach the API (it is down, or the network is)");
    }
    try { data = await resp.json(); } catch { data = null; }
    if (ctrl.signal.aborted) throw timedOut();
  } finally {
    clearTimeout(timer);
  }
  if (!resp.ok) {
    const err = (data && data.error) || {};
    // a key signed in since this call went out is not the one refused
    if (resp.status === 401 && storedKey() === key) onUnauthorized();
    const retryAfterS = retryAfterSeconds(resp.headers.get("Retry-After"));
    holdFor(resp.status, retryAfterS);
    throw new ApiError(resp.status, err.code || "error", err.message || resp.statusText,
      retryAfterS);
  }
  // a 200 that is not JSON is not the API's (a proxy's or a portal's sign-in page): say so,
  // rather than fail later on a null with a message that means nothing to the user
  if (data === null) {
    throw new ApiError(resp.status, "not_json", `not an answer of the API (HTTP ${resp.status}, `
      + `${resp.headers.get("Content-Type") || "no Content-Type"}); is a proxy in the way?`);
  }
  return data;
}

function timedOut() {
  return new ApiError(0, "timeout", `no answer from the API within ${CALL_TIMEOUT_MS / 1000} s`);
}

// Open a Server-Sent Events stream with fetch(): EventSource cannot send the Authorization
// header, and the key must never be in a URL. Resolves to the response once it is a stream.
export async function openStream(path, { params = {}, lastId = null, signal } = {}) {
  const url = new URL(path, window.location.origin);
  for (const [k, v] of Object.entries(params)) if (v) url.searchParams.set(k, v);
  const key = storedKey();
  const headers = { Authorization: `Bearer ${key}`, Accept: "text/event-stream" };
  if (lastId !== null) headers["Last-Event-ID"] = lastId;
  const resp = await fetch(url, { headers, signal, credentials: "omit", cache: "no-store" });
  if (resp.status === 401 && storedKey() === key) onUnauthorized();
  const type = resp.headers.get("Content-Type") || "";
  if (!resp.ok || !type.startsWith("text/event-stream")) {
    resp.body?.cancel().catch(() => {});
    const retryAfterS = retryAfterSeconds(resp.headers.get("Retry-After"));
    holdFor(resp.status, retryAfterS);
    throw new ApiError(resp.status, "no_stream", `no event stream (HTTP ${resp.status})`,
      retryAfterS);
  }
  return resp;
}

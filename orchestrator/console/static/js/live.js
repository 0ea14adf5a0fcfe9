// Live updates: a Server-Sent Events stream read with fetch() (see openStream), polling
// while there is none (an API without the route, a proxy that blocks it, a network error).
import { openStream, ApiError, heldMs } from "./api.js";

const GONE = new Set([404, 405, 501]); // no such route here: poll for as long as the view is shown
const BACKOFF_MS = [1000, 2000, 5000, 10000, 30000];
// The API writes to an open stream at least every ORCH_EVENTS_PING_S (50 s at most): a stream
// silent for longer (its answer never came, or the connection died unseen: a laptop that
// slept, a NAT that forgot it) is a dropped one, as the SDK's 60 s read timeout has it.
export const STREAM_SILENCE_MS = 60000;

// Read a text/event-stream body, calling onMessage({ id, event, data }) for each message
// (data undefined: an id alone).
export async function readEvents(body, onMessage) {
  const reader = body.pipeThrough(new TextDecoderStream()).getReader();
  let buf = "";
  let msg = {};
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buf += value;
    // a "\r" at the very end may be the first half of a "\r\n": it waits for the next chunk
    const lines = buf.split(/\r\n|\n|\r(?!$)/);
    buf = lines.pop();
    for (const line of lines) {
      if (line === "") {
        // a message with an id and no data (a feed's start) moves Last-Event-ID only
        if (msg.data !== undefined || msg.id !== undefined) onMessage(msg);
        msg = {};
      } else if (!line.startsWith(":")) { // ":" starts a comment (the server's keep-alive)
        const i = line.indexOf(":");
        const field = i < 0 ? line : line.slice(0, i);
        const value = i < 0 ? "" : line.slice(i + 1).replace(/^ /, "");
        if (field === "data") msg.data = msg.data === undefined ? value : `${msg.data}\n${value}`;
        else if (field === "id" || field === "event") msg[field] = value;
      }
    }
  }
}

// Run `fn`s one after another, so an older answer never lands after a newer one; a key
// already waiting its turn is not queued twice. Errors go to the status line.
export function serially(ctx) {
  let chain = Promise.resolve();
  const waiting = new Set();
  return (key, fn) => {
    if (waiting.has(key)) return chain;
    waiting.add(key);
    chain = chain.then(() => { waiting.delete(key); return fn(); })
      .catch(e => { ctx.setStatus(`error: ${e.message}`, "error"); });
    return chain;
  };
}

// Gather keys and hand them to `fn(keys)` at most once every `ms`: the first batch at once
// (on the next turn, so the events of one chunk make one batch), the next when `ms` has passed
// since the last and the last's promise (what `fn` returns) has settled: on a slow API the
// keys wait and gather, rather than reads queueing up behind each other. A busy feed then
// costs one batch a period, however many events it carries. Stopped with its view
// (ctx.timers): nothing gathered is handed on after the view is left.
export function batched(ctx, ms, fn) {
  const keys = new Set();
  const handle = { stopped: false, timer: null, last: -Infinity };
  let busy = false;
  handle.stop = () => { handle.stopped = true; clearTimeout(handle.timer); keys.clear(); };
  const flush = () => {
    handle.timer = null;
    if (handle.stopped) return;
    if (busy) { handle.timer = setTimeout(flush, ms); return; }
    handle.last = performance.now();
    const batch = [...keys];
    keys.clear();
    busy = true;
    const done = () => { busy = false; };
    Promise.resolve(fn(batch)).then(done, done);
  };
  ctx.timers.push(handle);
  return key => {
    if (handle.stopped) return;
    keys.add(key);
    if (handle.timer === null) {
      handle.timer = setTimeout(flush, Math.max(0, handle.last + ms - performance.now()));
    }
  };
}

// While the view is shown, keep the stream at `path` open: `onEvent(message)` for each event;
// `load()` when it opens with nothing to resume from (what happened before it), and every `ms`
// while there is no stream. A drop is resumed with Last-Event-ID after a backoff, or after
// what the refusal's Retry-After asked (429, 503), whichever is longer; the polls meanwhile
// wait for it too. `load()` returning true means nothing more will change (the job has ended
// and no attempt of it is still open, so no late charge is to come): then no stream is opened
// again, nothing polls, and the status line says the updates ended; so too once the API
// answers 204 (resumed after the job's last event). A stream that ends on its own (a job's,
// after its terminal event and a late charge) is reopened only while `load()` is not true.
// A hidden tab closes the stream (the API caps connections).
export function follow(ctx, path, { ms, load, onEvent }) {
  const handle = { stopped: false, ctrl: null, retry: null, poll: null };
  let lastId = null;
  let failures = 0;
  let active = false;    // connecting or connected
  let over = false;      // no stream route, or nothing more will come
  let finished = false;  // nothing more will change
  const unpoll = () => {
    if (handle.poll) handle.poll.stop();
    handle.poll = null;
  };
  const finish = () => {
    over = finished = true;
    clearTimeout(handle.retry);
    unpoll();
    if (!handle.stopped) ctx.setUpdates("ended");
  };
  const safeLoad = async () => {
    try {
      return await load();
    } catch (e) {
      ctx.setStatus(`error: ${e.message}`, "error");
      return false;
    }
  };
  const poll = () => {
    if (handle.stopped || finished) return;
    if (!handle.poll) {
      // a 429 refused the stream for the whole tenant: a poll at once would be refused too
      handle.poll = ctx.every(ms, async () => {
        if ((await load()) !== true) return false;
        finish();
        return true;
      }, { wait: heldMs() });
    }
    ctx.setUpdates("polling");
  };

  async function connect() {
    if (handle.stopped || over || active || document.hidden) return;
    active = true;
    clearTimeout(handle.retry);
    const ctrl = handle.ctrl = new AbortController();
    let silent = false;
    let watchdog = null;
    const heard = () => {
      clearTimeout(watchdog);
      watchdog = setTimeout(() => { silent = true; ctrl.abort(); }, STREAM_SILENCE_MS);
    };
    heard();
    let ended = false;
    try {
      const resp = await openStream(path, { lastId, signal: ctrl.signal });
      // left meanwhile, or a poll found the job ended meanwhile
      if (handle.stopped || over) { resp.body?.cancel().catch(() => {}); active = false; return; }
      unpoll();
      ctx.setUpdates("live");
      if (lastId === null) safeLoad();
      // every chunk (a keep-alive comment too) says the stream is alive
      const body = resp.body.pipeThrough(new TransformStream({
        transform(chunk, out) { heard(); out.enqueue(chunk); } }));
      await readEvents(body, msg => {
        if (msg.id !== undefined) lastId = msg.id;
        if (msg.data === undefined) return;
        failures = 0; // the backoff starts again only once a stream has carried something
        onEvent(msg);
      });
      ended = true;
    } catch (e) {
      active = false;
      if (handle.stopped || over) return;
      // closed for a hidden tab; if it was shown again meanwhile, connect() found this one
      // active. A silent stream is a drop: polled, and retried after the backoff.
      if (e.name === "AbortError" && !silent) { reconnect(); return; }
      if (e instanceof ApiError && e.status === 401) return; // signed out
      // 204: resumed after the job's last event; nothing more will come
      if (e instanceof ApiError && e.status === 204) {
        over = true;
        unpoll();
        await safeLoad();
        if (!handle.stopped) finish();
        return;
      }
      poll();
      if (e instanceof ApiError && GONE.has(e.status)) { over = true; return; }
    } finally {
      clearTimeout(watchdog);
    }
    active = false;
    if (handle.stopped || over) return;
    if (ended && (await safeLoad()) === true) { finish(); return; }
    if (handle.stopped || over) return; // left, or finished by a poll, while it loaded
    if (ended) poll(); // until the stream is back
    const backoff = BACKOFF_MS[Math.min(failures++, BACKOFF_MS.length - 1)];
    handle.retry = setTimeout(connect, Math.max(backoff, heldMs()));
  }

  // at once, unless the API asked to wait (Retry-After) a while that has not passed yet
  function reconnect() {
    clearTimeout(handle.retry);
    if (heldMs() > 0) handle.retry = setTimeout(connect, heldMs()); else connect();
  }

  const onVisibility = () => {
    if (document.hidden) { clearTimeout(handle.retry); handle.ctrl?.abort(); } else reconnect();
  };
  document.addEventListener("visibilitychange", onVisibility);
  handle.stop = () => {
    handle.stopped = true;
    clearTimeout(handle.retry);
    handle.ctrl?.abort();
    unpoll();
    document.removeEventListener("visibilitychange", onVisibility);
  };
  ctx.timers.push(handle);
  safeLoad();
  connect();
  return handle;
}

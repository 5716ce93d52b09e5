// Switchboard admin page: the whole cluster, live, through the HTTP API alone.
//
// Every second it reads GET /api/v1/nodes, /api/v1/presence and a page of /api/v1/rooms, and
// shows the nodes, the totals, the busiest rooms (ranked once the pages, one a poll, have
// covered every room), events in/out per second (from the deltas of each node's
// eventsIn/eventsOut counters) and the nodes' recent errors. Two forms act:
// POST /api/v1/emit and POST /api/v1/users/{userId}/disconnect.
//
// The key is one of admin.keys, kept in sessionStorage and sent as a bearer key; a 401
// answer signs out. `?interval=ms` changes the polling interval (tests use it).
//
// Every string from the API goes into the DOM as textContent, never as HTML.

/** How often the page polls the API, in milliseconds. */
const POLL_INTERVAL_MS = 1000;
/** Points kept in each chart. */
const CHART_POINTS = 60;
/** An API call that takes longer fails (and the next poll tries again). */
const REQUEST_TIMEOUT_MS = 10_000;
/** Rows in the busiest-rooms table. */
const TOP_ROOMS = 10;
/** Rows in the recent-errors table. */
const MAX_ERRORS = 20;
/** Rooms asked for in one poll (one page of GET /api/v1/rooms). */
const ROOMS_LIMIT = 1000;
const KEY_STORAGE = "switchboard-admin-key";
const REFUSED = "That key does not open the admin page";

const params = new URLSearchParams(location.search);
const interval = (() => {
  const ms = Number(params.get("interval"));
  return Number.isFinite(ms) && ms >= 50 ? ms : POLL_INTERVAL_MS;
})();

const $ = (id) => document.getElementById(id);

const state = {
  key: null,
  /** Bumped on every sign-in and sign-out: answers of an older session are ignored. */
  generation: 0,
  timer: null,
  /** The previous poll's counters: { at: ms, counters: Map nodeId → {in, out} }. */
  previous: null,
  rateIn: [],
  rateOut: [],
  rooms: newRoomsWalk(),
};

/**
 * The walk through every room, a page a poll: the next page's cursor, the busiest rooms of
 * the pages read so far in this walk, how many rooms and pages they were, and the ranking
 * of the last complete walk (null before the first one ends).
 */
function newRoomsWalk() {
  return { cursor: null, top: [], scanned: 0, pages: 0, shown: null };
}

// ---------- the API ----------

class ApiError extends Error {
  constructor(status, message, details) {
    super(message);
    this.status = status;
    this.details = details;
  }
}

/** Calls the API with the admin key; resolves with the JSON body, or throws ApiError. */
async function api(method, path, body) {
  const headers = { authorization: `Bearer ${state.key}` };
  const init = { method, headers, cache: "no-store", signal: AbortSignal.timeout(REQUEST_TIMEOUT_MS) };
  if (body !== undefined) {
    headers["content-type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  let res;
  try {
    res = await fetch(path, init);
  } catch (e) {
    throw new ApiError(0, `Cannot reach the gateway (${e.message})`);
  }
  let json = null;
  const text = await res.text();
  try {
    json = text ? JSON.parse(text) : null;
  } catch {
    // not JSON: use the status line below
  }
  if (!res.ok) {
    const message =
      json && typeof json.error === "string" && json.error
        ? json.error
        : `${res.status} ${res.statusText || "error"}`;
    throw new ApiError(res.status, message, json?.details);
  }
  return json;
}

// ---------- signing in and out ----------

async function signIn(key) {
  key = key.trim();
  if (!key) return;
  state.key = key;
  const generation = ++state.generation;
  $("login").disabled = true;
  try {
    // The key is good when the API does not answer 401; another failure (503, say) is
    // shown on the dashboard, which keeps polling.
    await api("GET", "/api/v1/nodes");
  } catch (e) {
    if (generation !== state.generation) return;
    if (e.status === 401 || e.status === 403) {
      signOut(REFUSED);
      return;
    }
    if (e.status === 0) {
      signOut(e.message);
      return;
    }
  } finally {
    $("login").disabled = false;
  }
  if (generation !== state.generation) return;
  sessionStorage.setItem(KEY_STORAGE, key);
  $("admin-key").value = "";
  $("login-error").hidden = true;
  $("login-view").hidden = true;
  $("dashboard").hidden = false;
  $("signout").hidden = false;
  setStatus("connecting", "Loading…");
  drawChart($("chart-in"), state.rateIn, "#3b5bdb");
  drawChart($("chart-out"), state.rateOut, "#2f9e44");
  poll(generation);
}

/** Back to the login form, forgetting the key and everything shown; `message` explains why. */
function signOut(message) {
  state.generation += 1;
  state.key = null;
  clearTimeout(state.timer);
  state.timer = null;
  state.previous = null;
  state.rateIn = [];
  state.rateOut = [];
  state.rooms = newRoomsWalk();
  sessionStorage.removeItem(KEY_STORAGE);
  for (const id of ["nodes", "rooms", "errors"]) $(id).replaceChildren();
  for (const id of ["total-nodes", "total-connections", "total-users", "rate-in", "rate-out"]) $(id).textContent = "–";
  for (const id of ["publish-result", "disconnect-result", "api-error", "rooms-empty", "errors-empty"]) $(id).hidden = true;
  $("rooms-note").textContent = "";
  $("dashboard").hidden = true;
  $("signout").hidden = true;
  $("login-view").hidden = false;
  const error = $("login-error");
  error.textContent = message ?? "";
  error.hidden = !message;
  setStatus("idle", "Signed out");
  $("admin-key").focus();
}

// ---------- polling ----------

async function poll(generation) {
  const [nodes, presence, rooms] = await Promise.allSettled([
    api("GET", "/api/v1/nodes"),
    api("GET", "/api/v1/presence"),
    api("GET", `/api/v1/rooms?limit=${ROOMS_LIMIT}${roomsCursor()}`),
  ]);
  if (generation !== state.generation) return;
  const failures = [nodes, presence, rooms].filter((r) => r.status === "rejected").map((r) => r.reason);
  if (failures.some((e) => e.status === 401 || e.status === 403)) {
    signOut(REFUSED);
    return;
  }

  if (nodes.status === "fulfilled") renderNodes(listOf(nodes.value, "nodes"));
  if (presence.status === "fulfilled") $("total-users").textContent = count(listOf(presence.value, "users").length);
  if (rooms.status === "fulfilled") renderRooms(rooms.value);

  if (failures.length > 0) {
    const messages = [...new Set(failures.map((e) => e.message))];
    const banner = $("api-error");
    banner.textContent = `The API failed: ${messages.join("; ")}. Still trying every ${seconds(interval)}.`;
    banner.hidden = false;
    setStatus("error", messages[0]);
  } else {
    $("api-error").hidden = true;
    setStatus("online", `Live · ${new Date().toLocaleTimeString()}`);
  }
  state.timer = setTimeout(() => poll(generation), interval);
}

function listOf(body, field) {
  return body && Array.isArray(body[field]) ? body[field] : [];
}

// ---------- nodes, totals, rates, errors ----------

function renderNodes(nodes) {
  nodes = [...nodes].sort((a, b) => String(a.id).localeCompare(String(b.id)));
  $("nodes").replaceChildren(
    ...nodes.map((n) => {
      const tr = row([
        ["id", n.id],
        ["connections num", count(n.connections)],
        ["users num", count(n.users)],
        ["uptime num", uptime(n.uptimeSecs)],
        ["version", n.version ?? ""],
        ["events-in num", count(n.eventsIn)],
        ["events-out num", count(n.eventsOut)],
        ["error-count num", count(Array.isArray(n.errors) ? n.errors.length : undefined)],
      ]);
      tr.dataset.node = String(n.id);
      return tr;
    }),
  );
  $("total-nodes").textContent = count(nodes.length);
  $("total-connections").textContent = count(nodes.reduce((sum, n) => sum + (Number(n.connections) || 0), 0));
  updateRates(nodes);
  renderErrors(nodes);
}

/** Events per second: the sum over nodes of each counter's growth since the last poll. */
function updateRates(nodes) {
  const now = performance.now();
  const counters = new Map();
  for (const n of nodes) {
    if (Number.isFinite(n.eventsIn) && Number.isFinite(n.eventsOut)) {
      counters.set(String(n.id), { in: n.eventsIn, out: n.eventsOut });
    }
  }
  const previous = state.previous;
  state.previous = { at: now, counters };
  if (!previous) return;
  const elapsed = (now - previous.at) / 1000;
  if (elapsed <= 0) return;
  let dIn = 0;
  let dOut = 0;
  for (const [id, c] of counters) {
    const before = previous.counters.get(id);
    if (!before) continue; // a node that just appeared: its counters start now
    // A counter that went down belongs to a restarted node: count what it has since.
    dIn += c.in >= before.in ? c.in - before.in : c.in;
    dOut += c.out >= before.out ? c.out - before.out : c.out;
  }
  push(state.rateIn, dIn / elapsed);
  push(state.rateOut, dOut / elapsed);
  showRate("rate-in", state.rateIn);
  showRate("rate-out", state.rateOut);
  drawChart($("chart-in"), state.rateIn, "#3b5bdb");
  drawChart($("chart-out"), state.rateOut, "#2f9e44");
}

function push(series, value) {
  series.push(value);
  if (series.length > CHART_POINTS) series.splice(0, series.length - CHART_POINTS);
}

function showRate(id, series) {
  const el = $(id);
  const value = series[series.length - 1];
  el.textContent = rate(value);
  el.dataset.value = String(value);
}

function renderErrors(nodes) {
  const all = [];
  for (const n of nodes) {
    const errors = Array.isArray(n.errors) ? n.errors : [];
    // Newest last in each node's list: keep that order as a tie-break.
    errors.forEach((e, i) => all.push({ ...e, node: String(n.id), seq: i }));
  }
  const time = (e) => {
    const t = Date.parse(e.at);
    return Number.isNaN(t) ? 0 : t;
  };
  all.sort((a, b) => time(b) - time(a) || b.seq - a.seq || a.node.localeCompare(b.node));
  const shown = all.slice(0, MAX_ERRORS);
  $("errors").replaceChildren(
    ...shown.map((e) => {
      const tr = row([
        ["at", when(e.at)],
        ["node", shortId(e.node)],
        ["kind", e.kind ?? ""],
        ["message", e.message ?? ""],
      ]);
      tr.dataset.node = e.node;
      tr.dataset.kind = String(e.kind ?? "");
      tr.querySelector(".at").title = String(e.at ?? "");
      tr.querySelector(".node").title = e.node;
      return tr;
    }),
  );
  $("errors-empty").hidden = shown.length > 0;
}

// ---------- rooms ----------

/** The cursor parameter of the rooms page this poll reads. */
function roomsCursor() {
  const cursor = state.rooms.cursor;
  return cursor == null ? "" : `&cursor=${encodeURIComponent(cursor)}`;
}

/** The `TOP_ROOMS` busiest of `rooms`: most sockets first, then by name. */
function busiest(rooms) {
  return rooms
    .sort((a, b) => (Number(b.sockets) || 0) - (Number(a.sockets) || 0) || a.room.localeCompare(b.room))
    .slice(0, TOP_ROOMS);
}

/** Takes a page of rooms into the walk and shows the ranking. */
function renderRooms(body) {
  const walk = state.rooms;
  const page = listOf(body, "rooms").filter((r) => r && typeof r.room === "string");
  walk.top = busiest([...walk.top, ...page]);
  walk.scanned += page.length;
  walk.pages += 1;
  const next = body && typeof body.next === "string" ? body.next : null;
  if (next == null) {
    // Every room read: this walk's ranking is the one shown until the next walk ends.
    walk.shown = { top: walk.top, scanned: walk.scanned, pages: walk.pages };
    Object.assign(walk, { cursor: null, top: [], scanned: 0, pages: 0 });
  } else {
    walk.cursor = next;
  }
  const shown = walk.shown ?? { top: walk.top, scanned: walk.scanned, pages: walk.pages, partial: true };
  $("rooms").replaceChildren(
    ...shown.top.map((r) => {
      const tr = row([
        ["room", r.room],
        ["users num", count(r.users)],
        ["sockets num", count(r.sockets)],
      ]);
      tr.dataset.room = r.room;
      return tr;
    }),
  );
  $("rooms-empty").hidden = shown.top.length > 0;
  $("rooms-note").textContent = shown.partial
    ? `(the first ${count(shown.scanned)} rooms by name; reading the rest, a page a poll)`
    : shown.pages > 1
      ? `(of all ${count(shown.scanned)} rooms, read in ${shown.pages} pages, one a poll)`
      : "";
}

// ---------- forms ----------

async function publish() {
  const room = $("publish-room").value.trim();
  const event = $("publish-event").value.trim();
  const text = $("publish-data").value.trim();
  let data;
  try {
    data = text === "" ? {} : JSON.parse(text);
  } catch (e) {
    showResult("publish-result", "error", `The data is not valid JSON: ${e.message}`);
    return;
  }
  const body = { event, data };
  if (room) body.room = room;
  const generation = state.generation;
  $("publish-submit").disabled = true;
  try {
    const answer = await api("POST", "/api/v1/emit", body);
    if (generation !== state.generation) return;
    const where = answer?.room ?? room;
    const dropped = answer?.dropped ? " (dropped by a hook)" : "";
    showResult("publish-result", "ok", `Published ${answer?.event ?? event} to ${where}${dropped}: ${JSON.stringify(answer)}`);
  } catch (e) {
    if (generation !== state.generation) return;
    if (e.status === 401 || e.status === 403) return signOut(REFUSED);
    showResult("publish-result", "error", failure(e));
  } finally {
    $("publish-submit").disabled = false;
  }
}

async function disconnectUser() {
  const userId = $("disconnect-user").value.trim();
  const reason = $("disconnect-reason").value.trim();
  if (!userId) return;
  const generation = state.generation;
  $("disconnect-submit").disabled = true;
  try {
    const answer = await api(
      "POST",
      `/api/v1/users/${encodeURIComponent(userId)}/disconnect`,
      reason ? { reason } : {},
    );
    if (generation !== state.generation) return;
    const n = Number(answer?.sockets) || 0;
    showResult("disconnect-result", "ok", `Disconnected ${n} socket(s) of ${answer?.userId ?? userId}`);
  } catch (e) {
    if (generation !== state.generation) return;
    if (e.status === 401 || e.status === 403) return signOut(REFUSED);
    showResult("disconnect-result", "error", failure(e));
  } finally {
    $("disconnect-submit").disabled = false;
  }
}

function failure(e) {
  const status = e.status ? `Error ${e.status}: ` : "";
  const details = e.details === undefined || e.details === null ? "" : ` (${JSON.stringify(e.details)})`;
  return `${status}${e.message}${details}`;
}

function showResult(id, kind, text) {
  const el = $(id);
  el.dataset.state = kind;
  el.textContent = text;
  el.hidden = false;
}

// ---------- the charts ----------

/** A line chart of `series` (values per second), newest at the right, on a canvas. */
function drawChart(canvas, series, color) {
  const ratio = window.devicePixelRatio || 1;
  const width = canvas.clientWidth || 300;
  const height = canvas.clientHeight || 150;
  if (canvas.width !== Math.round(width * ratio) || canvas.height !== Math.round(height * ratio)) {
    canvas.width = Math.round(width * ratio);
    canvas.height = Math.round(height * ratio);
  }
  const g = canvas.getContext("2d");
  g.setTransform(ratio, 0, 0, ratio, 0, 0);
  g.clearRect(0, 0, width, height);

  const left = 48;
  const right = 8;
  const top = 10;
  const bottom = 20;
  const w = width - left - right;
  const h = height - top - bottom;
  const max = niceMax(Math.max(0, ...series));

  g.font = "11px system-ui, sans-serif";
  g.fillStyle = "#6b7585";
  g.strokeStyle = "#dde2ea";
  g.lineWidth = 1;
  // Grid: the max and half of it.
  for (const [value, y] of [[max, top], [max / 2, top + h / 2]]) {
    g.beginPath();
    g.moveTo(left, y + 0.5);
    g.lineTo(left + w, y + 0.5);
    g.stroke();
    g.textAlign = "right";
    g.textBaseline = "middle";
    g.fillText(String(Number(value.toPrecision(3))), left - 6, y);
  }
  // Axes.
  g.strokeStyle = "#9aa3b2";
  g.beginPath();
  g.moveTo(left + 0.5, top);
  g.lineTo(left + 0.5, top + h + 0.5);
  g.lineTo(left + w, top + h + 0.5);
  g.stroke();
  g.textAlign = "right";
  g.textBaseline = "middle";
  g.fillText("0", left - 6, top + h);
  g.textBaseline = "top";
  g.textAlign = "left";
  g.fillText(`${seconds(interval * (CHART_POINTS - 1))} ago`, left, top + h + 5);
  g.textAlign = "right";
  g.fillText("now", left + w, top + h + 5);

  if (series.length === 0) return;
  const step = w / (CHART_POINTS - 1);
  const x = (i) => left + w - (series.length - 1 - i) * step;
  const y = (v) => top + h - (v / max) * h;
  g.beginPath();
  series.forEach((v, i) => (i === 0 ? g.moveTo(x(i), y(v)) : g.lineTo(x(i), y(v))));
  g.strokeStyle = color;
  g.lineWidth = 2;
  g.lineJoin = "round";
  g.stroke();
  // A light fill under the line.
  g.lineTo(x(series.length - 1), top + h);
  g.lineTo(x(0), top + h);
  g.closePath();
  g.globalAlpha = 0.12;
  g.fillStyle = color;
  g.fill();
  g.globalAlpha = 1;
}

/** A round number at least `v` (1, 2 or 5 times a power of ten), and at least 1. */
function niceMax(v) {
  if (!(v > 1)) return 1;
  const p = 10 ** Math.floor(Math.log10(v));
  for (const m of [1, 2, 5, 10]) if (m * p >= v) return m * p;
  return 10 * p;
}

// ---------- formatting ----------

function row(cells) {
  const tr = document.createElement("tr");
  for (const [className, value] of cells) {
    const td = document.createElement("td");
    td.className = className;
    td.textContent = String(value);
    tr.append(td);
  }
  return tr;
}

/** A node id short enough for a narrow column (the whole id is in the nodes table). */
function shortId(id) {
  return id.length > 12 ? `${id.slice(0, 8)}…` : id;
}

function count(v) {
  return Number.isFinite(v) ? v.toLocaleString("en-US") : "–";
}

function rate(v) {
  if (!Number.isFinite(v)) return "–";
  if (v === 0) return "0";
  if (v >= 100) return String(Math.round(v));
  if (v >= 10) return v.toFixed(1);
  return v.toFixed(2);
}

function uptime(secs) {
  if (!Number.isFinite(secs)) return "–";
  const s = Math.floor(secs);
  const d = Math.floor(s / 86400);
  const h = Math.floor((s % 86400) / 3600);
  const m = Math.floor((s % 3600) / 60);
  if (d > 0) return `${d}d ${h}h`;
  if (h > 0) return `${h}h ${m}m`;
  if (m > 0) return `${m}m ${s % 60}s`;
  return `${s}s`;
}

function seconds(ms) {
  const s = ms / 1000;
  return Number.isInteger(s) ? `${s} s` : `${s.toFixed(1)} s`;
}

function when(at) {
  const t = new Date(at);
  if (Number.isNaN(t.getTime())) return String(at ?? "");
  const sameDay = t.toDateString() === new Date().toDateString();
  return sameDay ? t.toLocaleTimeString() : t.toLocaleString();
}

function setStatus(kind, text) {
  const el = $("status");
  el.dataset.state = kind;
  el.textContent = text;
}

// ---------- wiring ----------

$("login-form").addEventListener("submit", (e) => {
  e.preventDefault();
  signIn($("admin-key").value);
});
$("signout").addEventListener("click", () => signOut());
$("publish-form").addEventListener("submit", (e) => {
  e.preventDefault();
  publish();
});
$("disconnect-form").addEventListener("submit", (e) => {
  e.preventDefault();
  disconnectUser();
});
window.addEventListener("resize", () => {
  if (!state.key) return;
  drawChart($("chart-in"), state.rateIn, "#3b5bdb");
  drawChart($("chart-out"), state.rateOut, "#2f9e44");
});

const saved = sessionStorage.getItem(KEY_STORAGE);
if (saved) signIn(saved);
else signOut();

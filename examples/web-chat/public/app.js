// Switchboard web chat: socket.io-client 4.8 against a Switchboard gateway.
//
// What it shows: signing in with a JWT (`handshake.auth.token`), joining a conversation,
// messages and status ticks the backend publishes over HTTP (`message:received`,
// `message:status`), typing indicators both ways (`typing:start`/`typing:stop`), and
// presence (`user:online`/`user:offline`).
//
// Run: cargo run -- --config examples/web-chat/switchboard.toml, then open
// http://127.0.0.1:3000/ (the gateway serves this folder; see the README beside it).
//
// `io` is the global from vendor/socket.io.min.js (socket.io-client 4.8.1).
//
// Types, with no build step: `switchboard-events.d.ts` beside this file is what
// `switchboard schema --format typescript --config examples/web-chat/switchboard.toml`
// prints (regenerate it when the config's plugins change); the JSDoc below imports it, so an
// editor with socket.io-client's types, and the end-to-end suite's `tsc --checkJs`, check
// every event name and payload field this script uses against the gateway's own schema.

// @ts-check
/** @typedef {import("./switchboard-events").ServerToClientEvents} ServerToClientEvents */
/** @typedef {import("./switchboard-events").ClientToServerEvents} ClientToServerEvents */
/** @typedef {import("./switchboard-events").MessageReceived} MessageReceived */
/** @typedef {import("./switchboard-events").MessageStatus} MessageStatus */
/** @typedef {import("./switchboard-events").TypingStarted | import("./switchboard-events").TypingStopped} TypingIndicator */
/** @typedef {import("socket.io-client").Socket<ServerToClientEvents, ClientToServerEvents>} ChatSocket */

/** @type {typeof import("socket.io-client").io | undefined} */
const io = /** @type {any} */ (globalThis).io;
const params = new URLSearchParams(location.search);
/** The gateway: this page's origin, or `?server=http://host:port` (then mind CORS). */
const SERVER = params.get("server") ?? location.origin;
/** The namespace (`transports.socketio.namespace`). */
const NAMESPACE = params.get("ns") ?? "/messages";
const TYPING_IDLE_MS = 2500;
const TYPING_EXPIRE_MS = 8000;
const TICKS = { sent: "✓", delivered: "✓✓", read: "✓✓" };

/** @type {(id: string) => any} */
const $ = (id) => document.getElementById(id);

const state = {
  /** @type {ChatSocket | null} */
  socket: null,
  /** @type {string | null} */
  me: null,
  /** @type {string | null} */
  conversationId: null,
  /** messageId → status, for a status that arrives before its message. */
  pendingStatus: new Map(),
  /** userId → "online" | "offline" | "unknown". */
  people: new Map(),
  /** userId → timer that clears a typing indicator nobody stopped. */
  typing: new Map(),
  typingSent: false,
  typingTimer: null,
};

// ---------- sign in ----------

/** The `sub` claim of a JWT, for display; the gateway is what verifies the token. */
function subjectOf(token) {
  try {
    const part = token.split(".")[1].replace(/-/g, "+").replace(/_/g, "/");
    const json = atob(part.padEnd(part.length + ((4 - (part.length % 4)) % 4), "="));
    const sub = JSON.parse(json).sub;
    return typeof sub === "string" && sub ? sub : null;
  } catch {
    return null;
  }
}

function signIn(token) {
  token = token.trim();
  const me = subjectOf(token);
  if (!me) {
    showSigninError("That does not look like a JWT with a `sub` claim.");
    return;
  }
  signOut();
  state.me = me;
  setStatus("connecting", `Connecting as ${me}…`);
  if (!io) return;
  /** @type {ChatSocket} */
  const socket = io(SERVER + NAMESPACE, { auth: { token } });
  state.socket = socket;

  socket.on("connect", () => {
    showChat();
    if (socket.recovered) {
      // Connection state recovery (`recovery.enabled`): back in the conversation, and
      // what arrived while offline has been replayed, in order, before anything live.
      setStatus("online", `Connected as ${me} (recovered)`);
      return;
    }
    setStatus("online", `Connected as ${me}`);
    // A fresh connection (first connect, or recovery not possible): join again.
    if (state.conversationId) join(state.conversationId);
  });
  socket.on("connect_error", (err) => {
    // "Authentication failed: Invalid token" and friends; the server refused the handshake.
    setStatus("error", err.message);
    if (!socket.active) {
      showSigninError(err.message);
      showSignin();
    }
  });
  socket.on("disconnect", (reason) => {
    setStatus("offline", `Disconnected (${reason})`);
  });

  socket.on("message:received", onMessage);
  socket.on("message:status", onStatus);
  socket.on("typing:start", (e) => onTyping(e, true));
  socket.on("typing:stop", (e) => onTyping(e, false));
  socket.on("user:online", ({ userId }) => setPresence(userId, "online"));
  socket.on("user:offline", ({ userId }) => {
    setPresence(userId, "offline");
    clearTyping(userId);
  });
  socket.on("auth:expiring", ({ expiresAt }) =>
    notice(`Your token expires at ${new Date(expiresAt).toLocaleTimeString()}; sign in again with a fresh one.`),
  );
  socket.on("error", ({ message }) => notice(message));
}

function signOut() {
  if (state.socket) {
    state.socket.removeAllListeners();
    state.socket.disconnect();
  }
  state.socket = null;
  state.conversationId = null;
  state.people.clear();
  state.pendingStatus.clear();
  for (const t of state.typing.values()) clearTimeout(t);
  state.typing.clear();
  $("messages").replaceChildren();
  $("people").replaceChildren();
  renderTyping();
}

// ---------- conversation ----------

async function join(conversationId) {
  const socket = state.socket;
  if (!socket) return;
  if (state.conversationId && state.conversationId !== conversationId) {
    stopTyping();
    socket.emit("conversation:leave", { conversationId: state.conversationId });
    $("messages").replaceChildren();
  }
  /** @type {import("./switchboard-events").ClientAcks["conversation:join"]} */
  let ack;
  try {
    ack = await socket.timeout(5000).emitWithAck("conversation:join", { conversationId });
  } catch {
    notice("The gateway did not answer the join in time.");
    return;
  }
  if (!ack || ack.success !== true) {
    notice((ack && "error" in ack && ack.error) || "Join refused");
    return;
  }
  state.conversationId = conversationId;
  $("conversation-title").textContent = `Conversation ${conversationId}`;
  $("conversation-state").hidden = false;
  $("draft").disabled = false;
  renderCurl("Hello from the backend");
  renderTyping();
}

/** @param {MessageReceived} m */
function onMessage(m) {
  if (m.conversationId !== state.conversationId) return;
  const list = $("messages");
  let li = list.querySelector(`li[data-message-id="${CSS.escape(m.messageId)}"]`);
  if (!li) {
    li = document.createElement("li");
    li.className = "message";
    li.dataset.messageId = m.messageId;
    li.innerHTML =
      '<div class="sender"></div><div class="body"></div>' +
      '<div class="meta"><time></time><span class="tick"></span></div>';
    list.append(li);
  }
  li.classList.toggle("mine", m.senderId === state.me);
  li.querySelector(".sender").textContent = m.senderId;
  li.querySelector(".body").textContent = contentText(m.content);
  const when = new Date(m.timestamp);
  li.querySelector("time").textContent = Number.isNaN(when.getTime())
    ? ""
    : when.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });
  setTick(li, state.pendingStatus.get(m.messageId) ?? m.status);
  state.pendingStatus.delete(m.messageId);
  seen(m.senderId);
  // The sender stopped typing once their message is out.
  clearTyping(m.senderId);
  li.scrollIntoView({ block: "end" });
}

/** @param {MessageStatus} update */
function onStatus({ conversationId, messageId, status }) {
  if (conversationId !== state.conversationId) return;
  const li = $("messages").querySelector(`li[data-message-id="${CSS.escape(messageId)}"]`);
  if (li) setTick(li, status);
  else state.pendingStatus.set(messageId, status);
}

/**
 * @param {Element} li
 * @param {string} status
 */
function setTick(li, status) {
  const tick = /** @type {HTMLElement} */ (li.querySelector(".tick"));
  tick.dataset.status = status;
  tick.textContent = TICKS[status] ?? "";
  tick.title = status;
}

/** A message's content as text: a string, `{body}` or `{text}`, else its JSON. */
function contentText(content) {
  if (typeof content === "string") return content;
  if (content && typeof content.body === "string") return content.body;
  if (content && typeof content.text === "string") return content.text;
  return JSON.stringify(content);
}

// ---------- typing ----------

/**
 * @param {TypingIndicator} indicator
 * @param {boolean} isTyping
 */
function onTyping({ conversationId, userId }, isTyping) {
  if (conversationId !== state.conversationId || userId === state.me) return;
  clearTimeout(state.typing.get(userId));
  if (isTyping) {
    // A client that vanishes never sends typing:stop; forget it after a while.
    state.typing.set(userId, setTimeout(() => clearTyping(userId), TYPING_EXPIRE_MS));
    seen(userId);
  } else {
    state.typing.delete(userId);
  }
  renderTyping();
}

function clearTyping(userId) {
  if (!state.typing.has(userId)) return;
  clearTimeout(state.typing.get(userId));
  state.typing.delete(userId);
  renderTyping();
}

function renderTyping() {
  const who = [...state.typing.keys()].sort();
  const el = $("typing");
  el.textContent =
    who.length === 0 ? "" : who.length === 1 ? `${who[0]} is typing…` : `${who.join(" and ")} are typing…`;
  el.classList.toggle("active", who.length > 0);
}

function onDraftInput() {
  const socket = state.socket;
  if (!socket || !state.conversationId) return;
  if ($("draft").value === "") {
    stopTyping();
    return;
  }
  if (!state.typingSent) {
    socket.emit("typing:start", { conversationId: state.conversationId });
    state.typingSent = true;
  }
  clearTimeout(state.typingTimer);
  state.typingTimer = setTimeout(stopTyping, TYPING_IDLE_MS);
}

function stopTyping() {
  clearTimeout(state.typingTimer);
  if (state.typingSent && state.socket && state.conversationId) {
    state.socket.emit("typing:stop", { conversationId: state.conversationId });
  }
  state.typingSent = false;
}

// ---------- presence ----------

function setPresence(userId, presence) {
  if (userId === state.me) return;
  state.people.set(userId, presence);
  renderPeople();
}

/** Someone showed up in the conversation; presence unknown until an event says. */
function seen(userId) {
  if (userId === state.me || state.people.has(userId)) return;
  state.people.set(userId, "unknown");
  renderPeople();
}

function renderPeople() {
  const items = [[state.me, "online", true], ...[...state.people].sort().map(([u, p]) => [u, p, false])];
  $("people").replaceChildren(
    ...items.map(([user, presence, self]) => {
      const li = document.createElement("li");
      li.dataset.user = user;
      li.dataset.presence = presence;
      const label = presence === "unknown" ? "presence unknown" : presence;
      li.innerHTML = '<span class="dot"></span><span class="name"></span><span class="presence"></span>';
      li.querySelector(".name").textContent = self ? `${user} (you)` : user;
      li.querySelector(".presence").textContent = label;
      return li;
    }),
  );
}

// ---------- view ----------

function setStatus(kind, text) {
  const el = $("status");
  el.dataset.state = kind;
  el.textContent = text;
}

function showChat() {
  $("signin-view").hidden = true;
  $("chat-view").hidden = false;
  $("signin-error").hidden = true;
  $("me-name").textContent = state.me;
  $("me-avatar").textContent = state.me.slice(0, 1).toUpperCase();
  renderPeople();
}

function showSignin() {
  $("chat-view").hidden = true;
  $("signin-view").hidden = false;
}

function showSigninError(text) {
  const el = $("signin-error");
  el.textContent = text;
  el.hidden = false;
}

let noticeTimer = null;
function notice(text) {
  const el = $("notice");
  el.textContent = text;
  el.hidden = false;
  clearTimeout(noticeTimer);
  noticeTimer = setTimeout(() => (el.hidden = true), 6000);
}

function renderCurl(text) {
  const body = {
    event: "message:received",
    data: {
      conversationId: state.conversationId,
      messageId: `m-${Date.now()}`,
      senderId: state.me,
      type: "text",
      content: { body: text },
      status: "sent",
      timestamp: new Date().toISOString(),
    },
  };
  $("curl").textContent =
    `curl -X POST ${SERVER}/api/v1/emit \\\n` +
    `  -H 'Authorization: Bearer dev-api-key' -H 'Content-Type: application/json' \\\n` +
    `  -d '${JSON.stringify(body).replace(/'/g, "'\\''")}'`;
}

/** Offers the tokens of `demo-users.json` (written by mint-demo-tokens.sh), when present. */
async function loadDemoUsers() {
  let users;
  try {
    const res = await fetch("demo-users.json", { cache: "no-store" });
    if (!res.ok) return;
    users = await res.json();
  } catch {
    return;
  }
  if (!Array.isArray(users) || users.length === 0) return;
  const select = $("demo-user");
  for (const { user, token } of users) {
    if (typeof user !== "string" || typeof token !== "string") continue;
    const option = document.createElement("option");
    option.value = token;
    option.textContent = user;
    select.append(option);
  }
  $("demo-users-label").hidden = false;
}

// ---------- wiring ----------

$("signin-form").addEventListener("submit", (e) => {
  e.preventDefault();
  signIn($("token").value);
});
$("demo-user").addEventListener("change", (/** @type {any} */ e) => {
  if (e.target.value) signIn(e.target.value);
});
$("signout").addEventListener("click", () => {
  signOut();
  state.me = null;
  setStatus("idle", "Not signed in");
  showSignin();
});
$("join-form").addEventListener("submit", (e) => {
  e.preventDefault();
  const id = $("conversation-id").value.trim();
  if (id) join(id);
});
$("draft").addEventListener("input", onDraftInput);
$("draft").addEventListener("blur", stopTyping);
$("composer").addEventListener("submit", (e) => {
  // Clients do not publish messages in this contract; show the backend call instead.
  e.preventDefault();
  const text = $("draft").value.trim();
  if (!text) return;
  renderCurl(text);
  $("backend-hint").open = true;
  $("draft").value = "";
  stopTyping();
});

if (!io) {
  setStatus("error", "vendor/socket.io.min.js did not load");
} else {
  loadDemoUsers();
  // `#token=…` signs in at once (handy from a shell: open "http://127.0.0.1:3000/#token=$T").
  const fromHash = new URLSearchParams(location.hash.slice(1)).get("token");
  if (fromHash) {
    history.replaceState(null, "", location.pathname + location.search);
    signIn(fromHash);
  }
}

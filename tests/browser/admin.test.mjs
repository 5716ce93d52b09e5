// The admin page (CONTRACT §6) in a real browser: Debian's Chromium, headless, driven by
// playwright-core, against two real `switchboard` nodes sharing one Redis.
//
// A wrong admin key is refused and the right one opens the page; the page shows both
// nodes, and a chat socket on the second node counts in that node's row and in the
// totals; the busiest-rooms table counts conversation:42's sockets, and ranks every room
// when there are more than a page of them; a publish from the page's form reaches the chat
// pages and shows in the events-out rate; disconnecting a user from the page drops that
// user's chat page for good; and while Redis is away the page shows the API's error and
// keeps polling, live again once Redis is back.
//
// The chat sockets come from the web-chat example (examples/web-chat/public), which both
// nodes serve (server.static_dir); the admin page is node A's /admin/.
//
// Run: tests/browser/run.sh (installs chromium and the npm packages when missing).
// Environment: SB_BIN (default <repo>/target/debug/switchboard), CHROMIUM (default
// /usr/bin/chromium), REDIS_SERVER (default redis-server on PATH), UPDATE_SCREENSHOT=1 to
// rewrite book/src/images/admin.png.

import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import { execFileSync, spawn } from "node:child_process";
import { randomBytes } from "node:crypto";
import { existsSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { connect, createServer } from "node:net";
import { tmpdir } from "node:os";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { chromium } from "playwright-core";

const REPO = resolve(dirname(fileURLToPath(import.meta.url)), "../..");
const BIN = process.env.SB_BIN ?? join(REPO, "target/debug/switchboard");
const CHROMIUM = process.env.CHROMIUM ?? "/usr/bin/chromium";
const REDIS = process.env.REDIS_SERVER ?? "redis-server";
const PAGE_DIR = join(REPO, "examples/web-chat/public");
const API_KEY = "admin-test-api-key";
const ADMIN_KEY = "admin-test-admin-key";
const REFUSED = "That key does not open the admin page";
const POLL_MS = 300; // the admin page's polling interval here (?interval=)
const TIMEOUT = 10_000;

let work; // temp folder: configs, Redis's dir, browser profile
let redis; // the redis-server child process
let redisPort;
let nodeA; // { base, child, log }: serves the admin page
let nodeB; // { base, child, log }: where alice's chat page connects
let context; // the browser
let admin; // the admin page (node A)
let alice; // alice's chat page (node B)
let bob; // bob's chat page (node A)
let nodeBId; // node B's id, as the nodes table shows it
const tokens = {};
const pageErrors = [];

function freePort() {
  return new Promise((ok, fail) => {
    const srv = createServer();
    srv.once("error", fail);
    srv.listen(0, "127.0.0.1", () => {
      const { port } = srv.address();
      srv.close(() => ok(port));
    });
  });
}

function accepts(port) {
  return new Promise((ok) => {
    const s = connect({ host: "127.0.0.1", port });
    s.once("connect", () => {
      s.destroy();
      ok(true);
    });
    s.once("error", () => ok(false));
  });
}

async function startRedis(port) {
  const child = spawn(
    REDIS,
    ["--port", String(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", work],
    { stdio: "ignore" },
  );
  let failed = null;
  child.once("error", (e) => (failed = e));
  const deadline = Date.now() + 10_000;
  while (Date.now() < deadline) {
    if (failed) throw new Error(`cannot start ${REDIS}: ${failed.message}`);
    if (child.exitCode !== null) throw new Error(`redis-server exited with ${child.exitCode}`);
    if (await accepts(port)) return child;
    await new Promise((r) => setTimeout(r, 50));
  }
  throw new Error(`redis-server did not listen on ${port} within 10 s`);
}

async function waitForHealth(node) {
  const deadline = Date.now() + 15_000;
  while (Date.now() < deadline) {
    if (node.child.exitCode !== null) throw new Error(`switchboard exited with ${node.child.exitCode}:\n${node.log}`);
    try {
      const res = await fetch(`${node.base}/healthz`);
      if (res.ok) return;
    } catch {
      // not listening yet
    }
    await new Promise((r) => setTimeout(r, 100));
  }
  throw new Error(`switchboard did not answer /healthz within 15 s:\n${node.log}`);
}

function startNode(configPath, base) {
  const child = spawn(BIN, ["serve", "--config", configPath], { stdio: ["ignore", "pipe", "pipe"] });
  const node = { base, child, log: "" };
  child.stdout.on("data", (d) => (node.log += d));
  child.stderr.on("data", (d) => (node.log += d));
  return node;
}

async function stop(child) {
  if (!child || child.exitCode !== null || child.signalCode !== null) return;
  const exited = new Promise((r) => child.once("exit", r));
  child.kill("SIGTERM");
  await Promise.race([exited, new Promise((r) => setTimeout(r, 5000))]);
  if (child.exitCode === null && child.signalCode === null) child.kill("SIGKILL");
}

function mint(configPath, sub) {
  return execFileSync(BIN, ["token", "--sub", sub, "--ttl", "1h", "--config", configPath], {
    encoding: "utf8",
  }).trim();
}

/** `switchboard_connections` on one node's /metrics. */
async function connectionsGauge(node) {
  const text = await (await fetch(`${node.base}/metrics`)).text();
  const line = text.split("\n").find((l) => /^switchboard_connections(\{\})? /.test(l));
  assert.ok(line, `no switchboard_connections in ${node.base}/metrics`);
  return Number(line.split(" ").pop());
}

/** Waits until `selector`'s text (trimmed) is `text`. */
async function waitForText(page, selector, text) {
  try {
    await page.waitForFunction(
      ([sel, want]) => document.querySelector(sel)?.textContent.trim() === want,
      [selector, text],
      { timeout: TIMEOUT },
    );
  } catch (e) {
    const got = await page.locator(selector).first().textContent({ timeout: 100 }).catch(() => null);
    throw new Error(`${selector}: expected text ${JSON.stringify(text)}, got ${JSON.stringify(got)} (${e.message})`);
  }
}

/** Waits until `selector`'s text (trimmed) starts with `prefix`. */
async function waitForPrefix(page, selector, prefix) {
  try {
    await page.waitForFunction(
      ([sel, want]) => document.querySelector(sel)?.textContent.trim().startsWith(want),
      [selector, prefix],
      { timeout: TIMEOUT },
    );
  } catch (e) {
    const got = await page.locator(selector).first().textContent({ timeout: 100 }).catch(() => null);
    throw new Error(`${selector}: expected text starting ${JSON.stringify(prefix)}, got ${JSON.stringify(got)} (${e.message})`);
  }
}

/** The web-chat page, signed in as `user` on `origin`, in conversation 42. */
async function signIn(page, token, user, origin) {
  await page.goto(`${origin}/`);
  await page.locator("#token").fill(token);
  await page.locator("#signin").click();
  await waitForText(page, "#status", `Connected as ${user}`);
  await page.locator("#conversation-id").fill("42");
  await page.locator("#join").click();
  await waitForText(page, "#conversation-title", "Conversation 42");
}

/** The nodes table: [{id, connections, users}] as the page shows them. */
function nodeRows(page) {
  return page.locator("#nodes tr").evaluateAll((trs) =>
    trs.map((tr) => ({
      id: tr.dataset.node,
      connections: tr.querySelector(".connections")?.textContent.trim(),
      users: tr.querySelector(".users")?.textContent.trim(),
    })),
  );
}

function noScriptErrors() {
  assert.deepEqual(pageErrors, [], "no script errors in the pages");
}

before(async () => {
  assert.ok(existsSync(BIN), `no switchboard binary at ${BIN}: run cargo build, or set SB_BIN`);
  assert.ok(existsSync(CHROMIUM), `no Chromium at ${CHROMIUM}: apt-get install chromium, or set CHROMIUM`);
  work = mkdtempSync(join(tmpdir(), "switchboard-admin-"));
  redisPort = await freePort();
  redis = await startRedis(redisPort);

  const [portA, portB] = [await freePort(), await freePort()];
  const bases = [`http://127.0.0.1:${portA}`, `http://127.0.0.1:${portB}`];
  const prefix = `admintest-${randomBytes(6).toString("hex")}:`;
  const config = (port) =>
    [
      "[server]",
      `listen = "127.0.0.1:${port}"`,
      `static_dir = ${JSON.stringify(PAGE_DIR)}`,
      `cors_origins = [${bases.map((b) => JSON.stringify(b)).join(", ")}]`,
      "[auth.jwt]",
      'secret = "admin-test-secret-0123456789-abcdefghijkl"',
      "[api]",
      `keys = [${JSON.stringify(API_KEY)}]`,
      "[admin]",
      "enabled = true",
      `keys = [${JSON.stringify(ADMIN_KEY)}]`,
      "[presence]",
      'plugin = "redis"',
      "[broker]",
      'plugin = "redis"',
      "[redis]",
      `url = "redis://127.0.0.1:${redisPort}"`,
      `key_prefix = ${JSON.stringify(prefix)}`,
      "[log]",
      'level = "warn"',
      "",
    ].join("\n");
  const configA = join(work, "node-a.toml");
  const configB = join(work, "node-b.toml");
  writeFileSync(configA, config(portA));
  writeFileSync(configB, config(portB));
  tokens.alice = mint(configA, "alice");
  tokens.bob = mint(configA, "bob");

  nodeA = startNode(configA, bases[0]);
  nodeB = startNode(configB, bases[1]);
  await Promise.all([waitForHealth(nodeA), waitForHealth(nodeB)]);

  context = await chromium.launchPersistentContext(join(work, "profile"), {
    executablePath: CHROMIUM,
    headless: true,
    args: [
      "--headless",
      "--no-sandbox",
      "--disable-gpu",
      "--disable-quic",
      "--no-first-run",
      "--disable-background-networking",
      "--disable-component-update",
      "--disable-sync",
    ],
    viewport: { width: 1280, height: 900 },
  });
  context.on("weberror", (e) => pageErrors.push(String(e.error())));
});

after(async () => {
  await context?.close().catch(() => {});
  await Promise.all([stop(nodeA?.child), stop(nodeB?.child)]);
  await stop(redis);
  if (work) rmSync(work, { recursive: true, force: true });
});

test("the gateway serves the admin page, and the API takes an admin key", async () => {
  const html = await fetch(`${nodeA.base}/admin/`);
  assert.equal(html.status, 200);
  assert.match(html.headers.get("content-type") ?? "", /^text\/html/);
  assert.match(await html.text(), /<title>Switchboard admin<\/title>/);
  const js = await fetch(`${nodeA.base}/admin/admin.js`);
  assert.equal(js.status, 200);
  // A module script needs a JavaScript MIME type, or the browser refuses to run it.
  assert.match(js.headers.get("content-type") ?? "", /javascript/);
  const css = await fetch(`${nodeA.base}/admin/admin.css`);
  assert.equal(css.status, 200);
  assert.match(css.headers.get("content-type") ?? "", /^text\/css/);

  const nodes = await fetch(`${nodeA.base}/api/v1/nodes`, { headers: { authorization: `Bearer ${ADMIN_KEY}` } });
  assert.equal(nodes.status, 200, "an admin key opens the API");
  const refused = await fetch(`${nodeA.base}/api/v1/nodes`, { headers: { authorization: "Bearer nope" } });
  assert.equal(refused.status, 401);
});

test("a wrong key is refused; the right key opens the page", async () => {
  admin = await context.newPage();
  await admin.goto(`${nodeA.base}/admin/?interval=${POLL_MS}`);
  await admin.locator("#login-view").waitFor({ timeout: TIMEOUT });
  assert.equal(await admin.locator("#dashboard").isVisible(), false);

  await admin.locator("#admin-key").fill("not-the-admin-key");
  await admin.locator("#login").click();
  await waitForText(admin, "#login-error", REFUSED);
  assert.equal(await admin.locator("#dashboard").isVisible(), false, "nothing shown before a key works");
  assert.equal(await admin.locator("#nodes tr").count(), 0);
  assert.equal(await admin.evaluate(() => sessionStorage.length), 0, "a refused key is not kept");

  await admin.locator("#admin-key").fill(ADMIN_KEY);
  await admin.locator("#login").click();
  await admin.locator("#dashboard").waitFor({ timeout: TIMEOUT });
  assert.equal(await admin.locator("#login-view").isVisible(), false);
  await waitForPrefix(admin, "#status", "Live");
  // The refused attempt is among the recent errors.
  await admin.locator('#errors tr[data-kind="api_unauthorized"]').first().waitFor({ timeout: TIMEOUT });

  // The key lasts for the tab: a reload stays signed in; signing out forgets it.
  await admin.reload();
  await admin.locator("#dashboard").waitFor({ timeout: TIMEOUT });
  await admin.locator("#signout").click();
  await admin.locator("#login-view").waitFor({ timeout: TIMEOUT });
  assert.equal(await admin.locator("#dashboard").isVisible(), false);
  assert.equal(await admin.locator("#nodes tr").count(), 0, "signing out clears what was shown");
  assert.equal(await admin.evaluate(() => sessionStorage.length), 0);
  await admin.locator("#admin-key").fill(ADMIN_KEY);
  await admin.locator("#login").click();
  await admin.locator("#dashboard").waitFor({ timeout: TIMEOUT });
  noScriptErrors();
});

test("both nodes show, and a socket on the second node counts in its row and the totals", async () => {
  await waitForText(admin, "#total-nodes", "2");
  await admin.waitForFunction(() => document.querySelectorAll("#nodes tr[data-node]").length === 2, null, {
    timeout: TIMEOUT,
  });
  await waitForText(admin, "#total-connections", "0");
  await waitForText(admin, "#total-users", "0");

  alice = await context.newPage();
  await signIn(alice, tokens.alice, "alice", nodeB.base);

  // One row goes to 1 connection, the other stays at 0.
  try {
    await admin.waitForFunction(
      () => {
        const cells = [...document.querySelectorAll("#nodes tr[data-node] .connections")].map((td) => td.textContent.trim());
        return cells.length === 2 && cells.filter((c) => c === "1").length === 1 && cells.includes("0");
      },
      null,
      { timeout: TIMEOUT },
    );
  } catch (e) {
    throw new Error(`nodes table: ${JSON.stringify(await nodeRows(admin))} (${e.message})`);
  }
  const rows = await nodeRows(admin);
  const busy = rows.find((r) => r.connections === "1");
  nodeBId = busy.id;
  assert.equal(busy.users, "1");
  assert.equal(rows.find((r) => r.id !== nodeBId).users, "0");
  // That row is node B's: the socket is on node B, none on node A.
  assert.equal(await connectionsGauge(nodeB), 1);
  assert.equal(await connectionsGauge(nodeA), 0);

  await waitForText(admin, "#total-connections", "1");
  await waitForText(admin, "#total-users", "1");
  noScriptErrors();
});

test("the busiest rooms show conversation:42 with its sockets", async () => {
  const row = '#rooms tr[data-room="conversation:42"]';
  await waitForText(admin, `${row} .sockets`, "1");
  await waitForText(admin, `${row} .users`, "1");

  bob = await context.newPage();
  await signIn(bob, tokens.bob, "bob", nodeA.base);
  await waitForText(admin, `${row} .sockets`, "2");
  await waitForText(admin, `${row} .users`, "2");
  await waitForText(admin, "#total-connections", "2");
  await waitForText(admin, "#total-users", "2");
  await waitForText(admin, `#nodes tr[data-node="${nodeBId}"] .connections`, "1");
  noScriptErrors();
});

test("with more rooms than a page holds, the busiest rooms are ranked over all of them", async () => {
  // 1,100 rooms of one socket whose names come before every other room's, then one more
  // room of two sockets whose name comes after them all.
  const call = async (verb, room, userId) => {
    const res = await fetch(`${nodeA.base}/api/v1/rooms/${verb}`, {
      method: "POST",
      headers: { authorization: `Bearer ${API_KEY}`, "content-type": "application/json" },
      body: JSON.stringify({ room, userId }),
    });
    assert.equal(res.status, 200, await res.text());
  };
  const names = Array.from({ length: 1100 }, (_, i) => `bulk:${String(i).padStart(4, "0")}`);
  for (let i = 0; i < names.length; i += 25) {
    await Promise.all(names.slice(i, i + 25).map((room) => call("join", room, "alice")));
  }
  await call("join", "zz:busiest", "alice");
  await call("join", "zz:busiest", "bob");

  // Two pages of 1000: both two-socket rooms rank first, whatever page they are on.
  await waitForText(admin, '#rooms tr[data-room="zz:busiest"] .sockets', "2");
  await waitForText(admin, '#rooms tr[data-room="conversation:42"] .sockets', "2");
  await waitForText(admin, "#rooms-note", "(of all 1,102 rooms, read in 2 pages, one a poll)");
  const ranked = await admin.$$eval("#rooms tr", (rows) => rows.map((r) => r.dataset.room));
  assert.equal(ranked.length, 10);
  assert.deepEqual(ranked.slice(0, 2), ["conversation:42", "zz:busiest"]);

  // Out of them again: one page, and the table as before.
  for (let i = 0; i < names.length; i += 25) {
    await Promise.all(names.slice(i, i + 25).map((room) => call("leave", room, "alice")));
  }
  await call("leave", "zz:busiest", "alice");
  await call("leave", "zz:busiest", "bob");
  await admin.waitForFunction(
    () => [...document.querySelectorAll("#rooms tr")].map((r) => r.dataset.room).join() === "conversation:42",
    null,
    { timeout: TIMEOUT },
  );
  assert.equal((await admin.locator("#rooms-note").textContent()).trim(), "");
  noScriptErrors();
});

test("a publish from the page reaches the chat pages and shows in events out per second", async () => {
  await admin.locator("#publish-room").fill("conversation:42");
  await admin.locator("#publish-event").fill("message:received");

  // A page in the background gets its timers and frames throttled: act on the front one.
  await admin.bringToFront();
  // Invalid data: the API's error is shown.
  await admin.locator("#publish-data").fill(JSON.stringify({ conversationId: "42" }));
  await admin.locator("#publish-submit").click();
  await admin.locator('#publish-result[data-state="error"]').waitFor({ timeout: TIMEOUT });
  assert.match(await admin.locator("#publish-result").textContent(), /^Error 422: .*messageId/);
  // ... and counted among node A's recent errors.
  const invalid = admin.locator('#errors tr[data-kind="api_invalid"]').first();
  await invalid.waitFor({ timeout: TIMEOUT });
  const nodeIds = await admin.locator("#nodes tr[data-node]").evaluateAll((trs) => trs.map((tr) => tr.dataset.node));
  const errorNode = await invalid.getAttribute("data-node");
  assert.ok(nodeIds.includes(errorNode) && errorNode !== nodeBId, `api_invalid on node A, not ${errorNode}`);

  await admin.locator("#publish-data").fill(
    JSON.stringify({
      conversationId: "42",
      messageId: "m1",
      senderId: "bob",
      type: "text",
      content: { body: "hi" },
      status: "sent",
      timestamp: "2026-12-02T10:00:00Z",
    }),
  );
  await admin.locator("#publish-submit").click();
  await admin.locator('#publish-result[data-state="ok"]').waitFor({ timeout: TIMEOUT });
  assert.match(await admin.locator("#publish-result").textContent(), /^Published message:received to conversation:42/);

  for (const page of [alice, bob]) {
    await waitForText(page, 'li[data-message-id="m1"] .body', "hi");
    await waitForText(page, 'li[data-message-id="m1"] .sender', "bob");
  }

  // The publish shows as a rate for one polling interval: look often.
  try {
    await admin.waitForFunction(() => Number.parseFloat(document.querySelector("#rate-out")?.textContent) > 0, null, {
      timeout: TIMEOUT,
      polling: 25,
    });
  } catch (e) {
    throw new Error(`#rate-out stayed at ${await admin.locator("#rate-out").textContent()} (${e.message})`);
  }

  const shot = process.env.UPDATE_SCREENSHOT ? join(REPO, "book/src/images/admin.png") : join(work, "admin.png");
  await admin.evaluate(() => window.scrollTo(0, 0));
  await admin.screenshot({ path: shot, fullPage: true });
  noScriptErrors();
});

test("disconnecting a user from the page drops that user's chat page for good", async () => {
  await admin.bringToFront();
  await admin.locator("#disconnect-user").fill("alice");
  await admin.locator("#disconnect-reason").fill("admin test");
  await admin.locator("#disconnect-submit").click();
  await waitForText(admin, "#disconnect-result", "Disconnected 1 socket(s) of alice");

  // The server closed it: socket.io-client says so and does not reconnect by itself.
  await waitForText(alice, "#status", "Disconnected (io server disconnect)");
  await bob.locator('#people li[data-user="alice"][data-presence="offline"]').waitFor({ timeout: TIMEOUT });
  await waitForText(admin, `#nodes tr[data-node="${nodeBId}"] .connections`, "0");
  await waitForText(admin, "#total-connections", "1");
  await waitForText(admin, "#total-users", "1");
  await waitForText(admin, '#rooms tr[data-room="conversation:42"] .sockets', "1");
  assert.equal(await connectionsGauge(nodeB), 0);
  assert.equal((await alice.locator("#status").textContent()).trim(), "Disconnected (io server disconnect)");
  await waitForText(bob, "#status", "Connected as bob");
  noScriptErrors();
});

test("when the API fails the page says why, keeps polling, and is live again once it answers", async () => {
  await admin.bringToFront();
  await admin.locator("#api-error").waitFor({ state: "hidden", timeout: TIMEOUT });

  // Redis goes away: the nodes answer 503 with a message, and the page shows it.
  const gone = new Promise((r) => redis.once("exit", r));
  redis.kill("SIGKILL");
  await gone;
  await admin.locator("#api-error").waitFor({ timeout: TIMEOUT });
  await admin.locator('#status[data-state="error"]').waitFor({ timeout: TIMEOUT });
  assert.match(await admin.locator("#api-error").textContent(), /^The API failed: .*Redis/);
  assert.equal(await admin.locator("#dashboard").isVisible(), true, "still signed in");

  // Redis is back (empty): the page is live again by itself, and the nodes have put bob back.
  redis = await startRedis(redisPort);
  await admin.locator("#api-error").waitFor({ state: "hidden", timeout: TIMEOUT });
  await admin.locator('#status[data-state="online"]').waitFor({ timeout: TIMEOUT });
  await waitForText(admin, "#total-nodes", "2");
  await waitForText(admin, "#total-users", "1");
  noScriptErrors();
});

// The web-chat example in a real browser: Debian's Chromium, headless, driven by
// playwright-core, against the real `switchboard` binary serving the page.
//
// Two users, alice and bob, sign in with minted tokens and join conversation 42; then,
// live: a message POSTed to /api/v1/emit shows in both pages, `message:status` changes the
// tick, bob typing shows on alice's page, and bob closing his page turns him offline there.
// Then carol's page, loaded through a TCP proxy, loses its connection while messages are
// published, and shows them once it reconnects (connection state recovery).
//
// Run: tests/browser/run.sh (installs chromium and the npm packages when missing).
// Environment: SB_BIN (default <repo>/target/debug/switchboard), CHROMIUM (default
// /usr/bin/chromium), UPDATE_SCREENSHOT=1 to rewrite book/src/images/web-chat.png.

import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import { execFileSync, spawn } from "node:child_process";
import { existsSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { createServer } from "node:net";
import { tmpdir } from "node:os";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { chromium } from "playwright-core";
import { startProxy } from "../e2e/proxy.mjs";

const REPO = resolve(dirname(fileURLToPath(import.meta.url)), "../..");
const BIN = process.env.SB_BIN ?? join(REPO, "target/debug/switchboard");
const CHROMIUM = process.env.CHROMIUM ?? "/usr/bin/chromium";
const PAGE_DIR = join(REPO, "examples/web-chat/public");
const API_KEY = "browser-test-api-key";
const TIMEOUT = 10_000;
const READ_BLUE = "rgb(28, 126, 214)"; // --read in style.css

let work; // temp folder: config and browser profile
let base; // http://127.0.0.1:PORT
let server; // the switchboard child process
let serverLog = "";
let context; // the browser
let proxy; // a TCP proxy in front of the gateway, to cut a page's connection
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

async function waitForHealth(url, child) {
  const deadline = Date.now() + 15_000;
  while (Date.now() < deadline) {
    if (child.exitCode !== null) throw new Error(`switchboard exited with ${child.exitCode}:\n${serverLog}`);
    try {
      const res = await fetch(`${url}/healthz`);
      if (res.ok) return;
    } catch {
      // not listening yet
    }
    await new Promise((r) => setTimeout(r, 100));
  }
  throw new Error(`switchboard did not answer /healthz within 15 s:\n${serverLog}`);
}

function mint(configPath, sub) {
  return execFileSync(BIN, ["token", "--sub", sub, "--ttl", "1h", "--config", configPath], {
    encoding: "utf8",
  }).trim();
}

async function emit(event, data) {
  const res = await fetch(`${base}/api/v1/emit`, {
    method: "POST",
    headers: { authorization: `Bearer ${API_KEY}`, "content-type": "application/json" },
    body: JSON.stringify({ event, data }),
  });
  const body = await res.json();
  assert.equal(res.status, 200, JSON.stringify(body));
  assert.equal(body.room, `conversation:${data.conversationId}`);
  return body;
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

async function signIn(page, token, user, origin = base) {
  await page.goto(`${origin}/`);
  await page.locator("#token").fill(token);
  await page.locator("#signin").click();
  await waitForText(page, "#status", `Connected as ${user}`);
  await page.locator("#conversation-id").fill("42");
  await page.locator("#join").click();
  await waitForText(page, "#conversation-title", "Conversation 42");
  assert.equal(await page.locator("#conversation-state").isVisible(), true);
}

function tick(page, messageId) {
  return page.locator(`li[data-message-id="${messageId}"] .tick`);
}

let tokens;

before(async () => {
  assert.ok(existsSync(BIN), `no switchboard binary at ${BIN}: run cargo build, or set SB_BIN`);
  assert.ok(existsSync(CHROMIUM), `no Chromium at ${CHROMIUM}: apt-get install chromium, or set CHROMIUM`);
  work = mkdtempSync(join(tmpdir(), "switchboard-browser-"));
  const port = await freePort();
  base = `http://127.0.0.1:${port}`;
  proxy = await startProxy(port);
  const configPath = join(work, "switchboard.toml");
  writeFileSync(
    configPath,
    [
      "[server]",
      `listen = "127.0.0.1:${port}"`,
      `static_dir = ${JSON.stringify(PAGE_DIR)}`,
      `cors_origins = [${JSON.stringify(base)}, ${JSON.stringify(proxy.url)}]`,
      "[recovery]",
      "enabled = true",
      "[auth.jwt]",
      'secret = "browser-test-secret-0123456789-abcdefghij"',
      "[api]",
      `keys = [${JSON.stringify(API_KEY)}]`,
      "[log]",
      'level = "warn"',
      "",
    ].join("\n"),
  );
  tokens = {
    alice: mint(configPath, "alice"),
    bob: mint(configPath, "bob"),
    carol: mint(configPath, "carol"),
  };

  server = spawn(BIN, ["serve", "--config", configPath], { stdio: ["ignore", "pipe", "pipe"] });
  server.stdout.on("data", (d) => (serverLog += d));
  server.stderr.on("data", (d) => (serverLog += d));
  await waitForHealth(base, server);

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
    viewport: { width: 1100, height: 700 },
  });
  context.on("weberror", (e) => pageErrors.push(String(e.error())));
});

after(async () => {
  await context?.close().catch(() => {});
  await proxy?.close();
  if (server && server.exitCode === null) {
    const exited = new Promise((r) => server.once("exit", r));
    server.kill("SIGTERM");
    await Promise.race([exited, new Promise((r) => setTimeout(r, 5000))]);
    if (server.exitCode === null) server.kill("SIGKILL");
  }
  if (work) rmSync(work, { recursive: true, force: true });
});

test("the gateway serves the page and the vendored socket.io-client", async () => {
  const html = await fetch(`${base}/`);
  assert.equal(html.status, 200);
  assert.match(await html.text(), /<title>Switchboard chat<\/title>/);
  const js = await (await fetch(`${base}/vendor/socket.io.min.js`)).text();
  assert.match(js, /Socket\.IO v4\.8\.1/);
  // Only public/ is served: the config beside it is not.
  assert.equal((await fetch(`${base}/switchboard.toml`)).status, 404);
});

test("a bad token is refused with the contract's message", async () => {
  const page = await context.newPage();
  try {
    await page.goto(`${base}/`);
    const [header, payload] = tokens.alice.split(".");
    await page.locator("#token").fill(`${header}.${payload}.bad-signature`);
    await page.locator("#signin").click();
    await waitForText(page, "#signin-error", "Authentication failed: Invalid token");
    assert.equal(await page.locator("#chat-view").isVisible(), false);
  } finally {
    await page.close();
  }
});

test("alice and bob see messages, status ticks, typing and presence live", async () => {
  const alice = context.pages()[0] ?? (await context.newPage());
  const bob = await context.newPage();

  await signIn(alice, tokens.alice, "alice");
  await signIn(bob, tokens.bob, "bob");

  // Presence: bob connected after alice, so alice got user:online for him.
  await alice.locator('#people li[data-user="bob"][data-presence="online"]').waitFor({ timeout: TIMEOUT });

  // A message from the backend reaches both pages.
  await emit("message:received", {
    conversationId: "42",
    messageId: "m1",
    senderId: "alice",
    type: "text",
    content: { body: "Hello from the HTTP API" },
    status: "sent",
    timestamp: new Date().toISOString(),
  });
  for (const page of [alice, bob]) {
    await waitForText(page, 'li[data-message-id="m1"] .body', "Hello from the HTTP API");
    await waitForText(page, 'li[data-message-id="m1"] .sender', "alice");
  }
  assert.equal(await alice.locator('li[data-message-id="m1"]').getAttribute("class"), "message mine");
  assert.equal(await bob.locator('li[data-message-id="m1"]').getAttribute("class"), "message");
  assert.equal(await tick(alice, "m1").textContent(), "✓");
  assert.equal(await tick(alice, "m1").getAttribute("data-status"), "sent");

  await emit("message:received", {
    conversationId: "42",
    messageId: "m2",
    senderId: "bob",
    type: "text",
    content: "Hi alice! Ticks and typing are live.",
    status: "delivered",
    timestamp: new Date().toISOString(),
  });
  await waitForText(alice, 'li[data-message-id="m2"] .body', "Hi alice! Ticks and typing are live.");

  // Status ticks: sent ✓ → delivered ✓✓ → read, blue ✓✓.
  await emit("message:status", { conversationId: "42", messageId: "m1", status: "delivered" });
  for (const page of [alice, bob]) {
    await page.locator('li[data-message-id="m1"] .tick[data-status="delivered"]').waitFor({ timeout: TIMEOUT });
    assert.equal(await tick(page, "m1").textContent(), "✓✓");
  }
  const grey = await tick(alice, "m1").evaluate((el) => getComputedStyle(el).color);
  assert.notEqual(grey, READ_BLUE);
  await emit("message:status", { conversationId: "42", messageId: "m1", status: "read" });
  await alice.locator('li[data-message-id="m1"] .tick[data-status="read"]').waitFor({ timeout: TIMEOUT });
  assert.equal(await tick(alice, "m1").textContent(), "✓✓");
  assert.equal(await tick(alice, "m1").evaluate((el) => getComputedStyle(el).color), READ_BLUE);

  // Typing: bob types, alice sees it; bob does not see himself.
  await bob.locator("#draft").pressSequentially("On my way", { delay: 15 });
  await waitForText(alice, "#typing", "bob is typing…");
  assert.equal((await bob.locator("#typing").textContent()).trim(), "");

  const shot = process.env.UPDATE_SCREENSHOT
    ? join(REPO, "book/src/images/web-chat.png")
    : join(work, "web-chat.png");
  await alice.screenshot({ path: shot });

  // Clearing the draft sends typing:stop.
  await bob.locator("#draft").fill("");
  await waitForText(alice, "#typing", "");

  // Bob leaves: alice sees him offline.
  await bob.close();
  await alice.locator('#people li[data-user="bob"][data-presence="offline"]').waitFor({ timeout: TIMEOUT });
  await waitForText(alice, '#people li[data-user="bob"] .presence', "offline");

  assert.deepEqual(pageErrors, [], "no script errors in the pages");
});

function message(messageId, body) {
  return {
    conversationId: "42",
    messageId,
    senderId: "alice",
    type: "text",
    content: { body },
    status: "sent",
    timestamp: new Date().toISOString(),
  };
}

test("messages published while the page was offline appear once it reconnects", async () => {
  const carol = await context.newPage();
  try {
    await signIn(carol, tokens.carol, "carol", proxy.url);
    await emit("message:received", message("r1", "before the drop"));
    await waitForText(carol, 'li[data-message-id="r1"] .body', "before the drop");

    // The network goes away: the connection is cut and reconnecting is refused.
    proxy.hold();
    proxy.cut();
    await carol.waitForFunction(() => document.querySelector("#status")?.textContent.startsWith("Disconnected"), null, {
      timeout: TIMEOUT,
    });
    const missed = [
      ["r2", "while you were offline"],
      ["r3", "and another one"],
    ];
    for (const [id, body] of missed) await emit("message:received", message(id, body));
    await emit("message:status", { conversationId: "42", messageId: "r1", status: "read" });
    assert.equal(await carol.locator('li[data-message-id="r2"]').count(), 0, "nothing arrives while offline");

    // The network is back: socket.io-client reconnects by itself and recovers.
    proxy.release();
    await waitForText(carol, "#status", "Connected as carol (recovered)");
    for (const [id, body] of missed) await waitForText(carol, `li[data-message-id="${id}"] .body`, body);
    await carol.locator('li[data-message-id="r1"] .tick[data-status="read"]').waitFor({ timeout: TIMEOUT });
    const order = await carol.locator("#messages li").evaluateAll((lis) => lis.map((li) => li.dataset.messageId));
    assert.deepEqual(order.filter((id) => id.startsWith("r")), ["r1", "r2", "r3"], "in order, each once");
    await waitForText(carol, "#conversation-title", "Conversation 42");

    // And it is live again.
    await emit("message:received", message("r4", "live again"));
    await waitForText(carol, 'li[data-message-id="r4"] .body', "live again");
    assert.deepEqual(pageErrors, [], "no script errors in the pages");
  } finally {
    await carol.close();
  }
});

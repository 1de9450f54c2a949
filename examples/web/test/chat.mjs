// The chat page, used as people use it, in headless Chromium (playwright-core driving
// the Debian chromium) against chatroom servers this test starts from the binary: a
// trusted-names server (--auth header) and a token server (--auth jwt). It checks what
// a person must be able to see and do, and saves a screenshot at each step:
//
//   01 the sign-in form, its inputs labelled        06 the server killed: "reconnecting"
//   02 a refused Enter, its error visible            07 the server back: "resumed", nothing twice
//   03 alice in a room                               08 alice switches room; bob sees her leave
//   04 bob arrives: the member list, online flags    09 alice leaves: back to sign-in, told so
//   05 messages with timestamps, one's own marked    10 sign-in with a token; 11 a refused token
//
//   node test/chat.mjs --binary ../../target/debug/chatroom --screenshots ../../target/web-screenshots
//
// Exit status 0 when every step held; the screenshots stay in --screenshots.

import { spawn, execFileSync } from "node:child_process";
import { mkdirSync, mkdtempSync, rmSync } from "node:fs";
import { createServer } from "node:net";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { parseArgs } from "node:util";
import { chromium } from "playwright-core";

import { serve } from "../serve.mjs";

const { values: args } = parseArgs({
  options: {
    binary: { type: "string" },
    port: { type: "string", default: "0" },
    chromium: { type: "string", default: process.env.CHROMIUM ?? "/usr/bin/chromium" },
    screenshots: { type: "string", default: "screenshots" },
  },
});
const BINARY = resolve(args.binary);
const SHOTS = resolve(args.screenshots);
const TIMEOUT = 15_000;
const SECRET = "the web test's secret, 32 bytes or more";
mkdirSync(SHOTS, { recursive: true });
const dir = mkdtempSync(join(tmpdir(), "chatroom-web-"));

function freePort() {
  return new Promise((done) => {
    const server = createServer();
    server.listen(0, "127.0.0.1", () => {
      const { port } = server.address();
      server.close(() => done(port));
    });
  });
}

/** The chatroom binary on `port`, allowing the page's origin. */
function chatroom(port, file, origin, ...flags) {
  const child = spawn(BINARY, ["--listen", `127.0.0.1:${port}`, "--database-url", `sqlite://${dir}/${file}`,
    "--log", "error", "--cors-origins", origin, ...flags], { stdio: "inherit" });
  return { child, exited: new Promise((done) => child.once("exit", done)) };
}

function mint(...claims) {
  return execFileSync(BINARY, ["token", "--jwt-secret", SECRET, ...claims]).toString().trim();
}

const pageServer = await serve(Number(args.port));
const origin = `http://127.0.0.1:${pageServer.address().port}`;
const namesPort = await freePort();
const tokensPort = await freePort();
let names = chatroom(namesPort, "names.db", origin);
const tokens = chatroom(tokensPort, "tokens.db", origin, "--auth", "jwt", "--jwt-secret", SECRET);
const pageFor = (port) => `${origin}/?server=${encodeURIComponent(`http://127.0.0.1:${port}`)}`;
// --no-sandbox: CI runs as root, where Chromium's sandbox cannot start.
const browser = await chromium.launch({ executablePath: args.chromium, headless: true, args: ["--no-sandbox"] });

let step = 0;
async function shot(page, name) {
  step += 1;
  const path = join(SHOTS, `${String(step).padStart(2, "0")}-${name}.png`);
  await page.screenshot({ path, fullPage: true });
  console.log(`step ${step}: ${name} (${path})`);
}

function check(condition, what) {
  if (!condition) throw new Error(what);
}

/** A tab of its own (its own browser context) on the page for `port`. */
async function tab(who, port) {
  const context = await browser.newContext({ viewport: { width: 1100, height: 760 } });
  const page = await context.newPage();
  page.on("pageerror", (error) => console.log(`[${who}] page error: ${error.message}`));
  await page.goto(pageFor(port));
  return page;
}

async function enterByName(page, name, room) {
  await page.getByLabel("Your name").fill(name);
  await page.getByLabel("Room", { exact: true }).fill(room);
  await page.getByRole("button", { name: "Enter" }).click();
  await page.locator("#room-title", { hasText: `# ${room}` }).waitFor({ timeout: TIMEOUT });
}

/** The message lines of `page` whose text is `text`. */
const messages = (page, text) => {
  const exactly = new RegExp(`^${text.replace(/[.*+?^${}()|[\]\\]/g, "\\$&")}$`);
  return page.locator("#log li.message").filter({ has: page.locator(".text", { hasText: exactly }) });
};

async function say(page, text) {
  await page.getByLabel("Message", { exact: true }).fill(text);
  await page.getByRole("button", { name: "Send" }).click();
}

let failed = false;
try {
  const room = "lobby";
  const alice = await tab("alice", namesPort);
  // 1. Labelled inputs: the form is found by its labels, as a screen reader finds it.
  for (const label of ["Your name", "Room"]) await alice.getByLabel(label, { exact: true }).waitFor();
  await shot(alice, "signin");

  // 2. A refused Enter shows its error where it is seen.
  await alice.getByLabel("Your name").fill("alice");
  await alice.getByLabel("Room", { exact: true }).fill("no spaces here");
  await alice.getByRole("button", { name: "Enter" }).click();
  const error = alice.getByRole("alert");
  await error.waitFor({ state: "visible", timeout: TIMEOUT });
  check((await error.textContent()).includes("room_id"), `the error names the field: ${await error.textContent()}`);
  await shot(alice, "enter-refused");

  // 3. Alice enters; 4. bob arrives, and alice's member list shows him online.
  await enterByName(alice, "alice", room);
  check(await alice.getByRole("alert").isHidden(), "the error is gone once entered");
  await shot(alice, "alice-in-the-room");
  const bob = await tab("bob", namesPort);
  await enterByName(bob, "bob", room);
  await alice.locator("#log li.event", { hasText: "bob joined" }).waitFor({ timeout: TIMEOUT });
  await alice.locator('#members li.online[data-user="bob"]').waitFor({ timeout: TIMEOUT });
  await alice.locator('#members li[data-user="alice"]', { hasText: "(you)" }).waitFor();
  await shot(alice, "members-online");

  // 5. Messages with their time; one's own marked as such.
  await say(alice, "hi bob");
  await messages(alice, "hi bob").waitFor({ timeout: TIMEOUT });
  await messages(bob, "hi bob").waitFor({ timeout: TIMEOUT });
  check(await messages(alice, "hi bob").evaluate((li) => li.classList.contains("mine")), "alice's own message is marked");
  check(!(await messages(bob, "hi bob").evaluate((li) => li.classList.contains("mine"))), "not bob's");
  check((await messages(bob, "hi bob").locator(".who").textContent()) === "alice", "bob sees who wrote it");
  const time = await messages(bob, "hi bob").locator("time").getAttribute("datetime");
  check(Math.abs(Date.parse(time) - Date.now()) < 60_000, `a timestamp: ${time}`);
  await say(bob, "hello alice");
  await messages(alice, "hello alice").waitFor({ timeout: TIMEOUT });
  await shot(bob, "messages");

  // 6. The server dies (SIGKILL): both pages say they are reconnecting.
  names.child.kill("SIGKILL");
  await names.exited;
  for (const page of [alice, bob]) {
    await page.locator("#connection.warn", { hasText: "reconnecting" }).waitFor({ timeout: TIMEOUT });
  }
  await shot(alice, "reconnecting");

  // 7. It comes back: the pages resume after the last message shown; a message sent
  // now appears once, and nothing shown before appears twice.
  names = chatroom(namesPort, "names.db", origin);
  for (const page of [alice, bob]) {
    await page.locator("#log li.event", { hasText: "resumed after message #2" }).waitFor({ timeout: TIMEOUT * 2 });
    await page.locator("#connection.ok").waitFor({ timeout: TIMEOUT });
  }
  await say(bob, "back again");
  await messages(alice, "back again").waitFor({ timeout: TIMEOUT });
  for (const [page, text] of [[alice, "hi bob"], [alice, "hello alice"], [alice, "back again"], [bob, "hi bob"]]) {
    check((await messages(page, text).count()) === 1, `${text} shown once`);
  }
  await shot(alice, "resumed");

  // 8. Alice switches rooms: the new room, its own history; bob sees her leave.
  await alice.getByLabel("Switch to room").fill("garden");
  await alice.getByRole("button", { name: "Switch" }).click();
  await alice.locator("#room-title", { hasText: "# garden" }).waitFor({ timeout: TIMEOUT });
  await alice.locator("#log li.event", { hasText: "you created garden" }).waitFor({ timeout: TIMEOUT });
  check((await alice.locator("#log li.message").count()) === 0, "the lobby's messages are not shown in garden");
  await bob.locator("#log li.event", { hasText: "alice left" }).waitFor({ timeout: TIMEOUT });
  await bob.locator('#members li[data-user="alice"]').waitFor({ state: "detached", timeout: TIMEOUT });
  await say(alice, "anyone here?");
  await messages(alice, "anyone here?").waitFor({ timeout: TIMEOUT });
  check((await messages(bob, "anyone here?").count()) === 0, "garden's message stays in garden");
  await shot(alice, "switched-room");
  await shot(bob, "bob-sees-alice-leave");

  // 9. Leaving: back to the sign-in form, told so.
  await alice.getByRole("button", { name: "Leave room" }).click();
  await alice.locator("#notice", { hasText: "You left garden." }).waitFor({ timeout: TIMEOUT });
  check(await alice.locator("#chat").isHidden(), "the room is no longer shown");
  await shot(alice, "left");

  // 10. Sign-in with a token (a server that verifies them): the token's user speaks.
  const carol = await tab("carol", tokensPort);
  await carol.getByLabel("a token (JWT)").check();
  await carol.getByLabel("Token", { exact: true }).fill(mint("--sub", "carol", "--name", "Carol"));
  await carol.getByLabel("Room", { exact: true }).fill("tokens");
  await carol.getByRole("button", { name: "Enter" }).click();
  await carol.locator("#room-title", { hasText: "# tokens" }).waitFor({ timeout: TIMEOUT });
  await carol.locator("#me", { hasText: "signed in as carol" }).waitFor();
  await say(carol, "signed in with a token");
  await messages(carol, "signed in with a token").waitFor({ timeout: TIMEOUT });
  check(await messages(carol, "signed in with a token").evaluate((li) => li.classList.contains("mine")), "carol's own message");
  await carol.locator('#members li.online[data-user="carol"]', { hasText: "Carol (you)" }).waitFor({ timeout: TIMEOUT });
  await shot(carol, "token-sign-in");

  // 11. A token the server refuses: the page says why.
  const dave = await tab("dave", tokensPort);
  await dave.getByLabel("a token (JWT)").check();
  await dave.getByLabel("Token", { exact: true }).fill(mint("--sub", "dave", "--rooms", "elsewhere"));
  await dave.getByLabel("Room", { exact: true }).fill("tokens");
  await dave.getByRole("button", { name: "Enter" }).click();
  await dave.getByRole("alert").filter({ hasText: "ROOM_NOT_IN_TOKEN" }).waitFor({ timeout: TIMEOUT });
  await shot(dave, "token-refused");
  console.log(`web example: every step held; screenshots in ${SHOTS}`);
} catch (error) {
  failed = true;
  console.log(`FAILED at step ${step + 1}: ${error.message}`);
  for (const context of browser.contexts()) {
    for (const page of context.pages()) await page.screenshot({ path: join(SHOTS, `failed-${context.pages().indexOf(page)}-${browser.contexts().indexOf(context)}.png`) }).catch(() => {});
  }
} finally {
  await browser.close();
  pageServer.close();
  names.child.kill();
  tokens.child.kill();
  rmSync(dir, { recursive: true, force: true });
}
process.exit(failed ? 1 : 0);

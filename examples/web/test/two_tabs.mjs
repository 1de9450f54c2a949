// Two people chat through the page in two browser tabs (headless Chromium driven by
// playwright-core), against a live chatroom server; a third arrives later and sees
// the history. Exit status 0 means both screens showed everything.
//
//     node test/two_tabs.mjs --server http://127.0.0.1:50051 --port 8080
//
// The server must allow the page's origin: --cors-origins http://127.0.0.1:8080.

import { parseArgs } from "node:util";
import { randomUUID } from "node:crypto";
import { chromium } from "playwright-core";

import { serve } from "../serve.mjs";

const { values: args } = parseArgs({
  options: {
    server: { type: "string", default: "http://127.0.0.1:50051" },
    port: { type: "string", default: "8080" },
    chromium: { type: "string", default: process.env.CHROMIUM ?? "/usr/bin/chromium" },
  },
});
const TIMEOUT = 10_000;
const room = `web-${randomUUID().slice(0, 8)}`;

const page_server = await serve(Number(args.port));
const page_url = `http://127.0.0.1:${page_server.address().port}/?server=${encodeURIComponent(args.server)}`;
// --no-sandbox: CI runs as root, where Chromium's sandbox cannot start.
const browser = await chromium.launch({
  executablePath: args.chromium,
  headless: true,
  args: ["--no-sandbox"],
});

let failed = false;
try {
  /** A tab of its own (its own browser context) where `nickname` enters the room. */
  async function tab(nickname) {
    const context = await browser.newContext();
    const page = await context.newPage();
    page.on("pageerror", (error) => console.log(`[${nickname}] page error: ${error.message}`));
    await page.goto(page_url);
    await page.fill("#nickname", nickname);
    await page.fill("#room", room);
    await page.click("#enter button");
    await page.waitForSelector(`#status:has-text("${nickname} in ${room}")`, { timeout: TIMEOUT });
    return page;
  }

  /** Waits until `page`'s log shows a line with exactly `text`. */
  async function shows(page, who, text) {
    const exactly = new RegExp(`^${text.replace(/[.*+?^${}()|[\]\\]/g, "\\$&")}$`);
    await page.locator("#log li").filter({ hasText: exactly }).first().waitFor({ timeout: TIMEOUT });
    console.log(`${who}'s screen shows: ${text}`);
  }

  async function say(page, text) {
    await page.fill("#text", text);
    await page.click("#send button");
  }

  const alice = await tab("alice");
  const bob = await tab("bob");
  await shows(alice, "alice", "bob joined");

  await say(alice, "hi bob");
  await shows(alice, "alice", "alice: hi bob");
  await shows(bob, "bob", "alice: hi bob");

  await say(bob, "hello alice");
  await shows(bob, "bob", "bob: hello alice");
  await shows(alice, "alice", "bob: hello alice");

  // A newcomer sees the history, in order, and then live messages.
  const carol = await tab("carol");
  await shows(carol, "carol", "alice: hi bob");
  await shows(carol, "carol", "bob: hello alice");
  const lines = await carol.locator("#log li.message").allTextContents();
  if (JSON.stringify(lines) !== JSON.stringify(["alice: hi bob", "bob: hello alice"])) {
    throw new Error(`carol's history: ${JSON.stringify(lines)}`);
  }
  await shows(alice, "alice", "carol joined");
  await say(carol, "hi both");
  for (const [page, who] of [[alice, "alice"], [bob, "bob"], [carol, "carol"]]) {
    await shows(page, who, "carol: hi both");
  }
  console.log("web example: two tabs chatted, a third saw the history");
} catch (error) {
  failed = true;
  console.log(`FAILED: ${error.message}`);
} finally {
  await browser.close();
  page_server.close();
}
process.exit(failed ? 1 : 0);

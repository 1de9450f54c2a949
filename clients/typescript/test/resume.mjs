// chatroom-client against the real server binary, from Node over gRPC
// (@connectrpc/connect-node): an application that writes no reconnect or resume code
// loses nothing when the server dies under it.
//
//   node test/resume.mjs --binary ../../target/debug/chatroom --database-url postgres://.../SCRATCH \
//       [--psql psql] [--nats-server nats-server]
//
// - a node killed (SIGKILL) and restarted while messages flow: the session delivers
//   every acknowledged message once, in order;
// - one of two cluster nodes killed: the session moves to the other and misses nothing;
// - typed errors (reason, BadRequest fields) and a rate-limited send that waits its
//   RetryInfo; a session kept across token expiries by a token provider.
// Each case starts its own servers on free ports. Exit status 0 when every check held.

import { spawn, execFileSync } from "node:child_process";
import { createServer } from "node:net";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { parseArgs } from "node:util";
import { createHmac } from "node:crypto";
import { grpcTransport as transport } from "../dist/node.js";
import { Code } from "@connectrpc/connect";
import { ChatClient, ChatroomError } from "../dist/index.js";

const { values: args } = parseArgs({
  options: {
    binary: { type: "string" },
    "database-url": { type: "string" },
    psql: { type: "string", default: "psql" },
    "nats-server": { type: "string", default: "nats-server" },
  },
});
const BINARY = resolve(args.binary);
const WAIT = 30_000;


const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

function check(condition, what) {
  if (!condition) throw new Error(`FAILED: ${what}`);
}

function freePort() {
  return new Promise((done) => {
    const server = createServer();
    server.listen(0, "127.0.0.1", () => {
      const { port } = server.address();
      server.close(() => done(port));
    });
  });
}

/** The chatroom binary on a port of its own, killed with SIGKILL when asked. */
class Server {
  static async start(databaseUrl, ...flags) {
    const server = new Server(await freePort(), databaseUrl, flags);
    server.run();
    return server;
  }
  constructor(port, databaseUrl, flags) {
    Object.assign(this, { port, databaseUrl, flags });
  }
  get url() {
    return `http://127.0.0.1:${this.port}`;
  }
  run() {
    this.process = spawn(BINARY, ["--listen", `127.0.0.1:${this.port}`, "--database-url", this.databaseUrl,
      "--log", "error", ...this.flags], { stdio: "inherit" });
    this.exited = new Promise((done) => this.process.once("exit", done));
  }
  async kill(signal = "SIGKILL") {
    if (this.process.exitCode === null && this.process.signalCode === null) this.process.kill(signal);
    await this.exited;
  }
}

/** Waits until `url` answers calls. */
async function serving(url, identity) {
  const client = new ChatClient({ targets: [url], transport, retryFor: 0, ...identity });
  const deadline = Date.now() + WAIT;
  for (;;) {
    try {
      await client.getRoom("probe");
      return;
    } catch (error) {
      if (!(error instanceof ChatroomError) || error.code !== Code.Unavailable) return;
    }
    check(Date.now() < deadline, `${url} did not start serving`);
    await sleep(100);
  }
}

/** Sends `count` messages while `session` receives; returns what it delivered, the
 * acknowledged seqs and every event. `onSent(i)` runs after the i-th send. */
async function flow(sender, session, roomId, count, pauseMs, onSent = async () => {}) {
  const events = [];
  const delivered = (async () => {
    const messages = [];
    for await (const event of session) {
      events.push(event);
      if (event.type === "message" && event.message.seq > 0n) {
        messages.push(event.message);
        if (messages.length === count) return messages;
      }
    }
    return messages;
  })();
  const acked = [];
  for (let i = 0; i < count; i++) {
    const message = await sender.send(roomId, `m${i}`);
    check(message.text === `m${i}`, "the stored text");
    acked.push(message.seq);
    await onSent(i);
    await sleep(pauseMs);
  }
  const timeout = sleep(WAIT * 2).then(() => null);
  const messages = await Promise.race([delivered, timeout]);
  session.close();
  check(messages !== null, `the session delivered ${count} messages in time`);
  return { messages, acked, events };
}

function assertExactlyOnce(messages, acked, who) {
  const seqs = messages.map((m) => Number(m.seq));
  const expected = acked.map(Number).sort((a, b) => a - b);
  check(JSON.stringify(seqs) === JSON.stringify(expected.map((_, i) => i + 1)), `${who}: delivered ${seqs}`);
  check(JSON.stringify(seqs) === JSON.stringify(expected), `${who}: acknowledged ${expected}, delivered ${seqs}`);
  check(messages.every((m, i) => m.text === `m${i}`), `${who}: texts in order`);
}

async function aKilledAndRestartedNode(dir) {
  const server = await Server.start(`sqlite://${dir}/restart.db`);
  try {
    await serving(server.url, { user: "alice" });
    const sender = new ChatClient({ targets: [server.url], transport, user: "alice" });
    const reader = new ChatClient({ targets: [server.url], transport, user: "alice" });
    await sender.enterRoom("r");
    const session = reader.session();
    await session.attach("r", 0n);
    const count = 40;
    const { messages, acked, events } = await flow(sender, session, "r", count, 20, async (i) => {
      if (i === 12) {
        await server.kill();
        await sleep(1000);
        server.run();
      }
    });
    assertExactlyOnce(messages, acked, "the session across a SIGKILL and restart");
    check(events.some((e) => e.type === "reconnecting"), "the stream did break");
    check(events.some((e) => e.type === "resumed"), "and was resumed");
    console.log(`ok  SIGKILL and restart under a flow of ${count}: every acknowledged message once, in order`);
  } finally {
    await server.kill("SIGTERM");
  }
}

async function aKilledClusterNode() {
  execFileSync(args.psql, [args["database-url"], "-qc", "DROP SCHEMA public CASCADE; CREATE SCHEMA public"],
    { stdio: "ignore" });
  const natsPort = await freePort();
  const nats = spawn(args["nats-server"], ["-a", "127.0.0.1", "-p", String(natsPort)], { stdio: "ignore" });
  const flags = ["--nats-url", `nats://127.0.0.1:${natsPort}`, "--node-lease-ms", "1500"];
  const a = await Server.start(args["database-url"], ...flags);
  let b;
  try {
    await serving(a.url, { user: "alice" });
    b = await Server.start(args["database-url"], ...flags);
    await serving(b.url, { user: "alice" });
    const sender = new ChatClient({ targets: [b.url, a.url], transport, user: "alice" });
    const reader = new ChatClient({ targets: [a.url, b.url], transport, user: "bob" });
    await sender.enterRoom("c");
    await reader.joinRoom("c");
    const session = reader.session();
    await session.attach("c", 0n);
    check(reader.target === a.url, "the reader starts on a");
    const count = 40;
    const { messages, acked, events } = await flow(sender, session, "c", count, 20, async (i) => {
      if (i === 12) await a.kill();
    });
    assertExactlyOnce(messages, acked, "the session across a killed node");
    const resumed = events.filter((e) => e.type === "resumed");
    check(resumed.length > 0 && resumed.at(-1).target === b.url, `resumed on the other node: ${JSON.stringify(resumed.map((e) => e.target))}`);
    console.log(`ok  one of two nodes killed: the session moves to the other, ${count} messages once each`);
  } finally {
    await a.kill("SIGTERM");
    if (b) await b.kill("SIGTERM");
    nats.kill();
  }
}

async function errorsAndRateLimits(dir) {
  const server = await Server.start(`sqlite://${dir}/errors.db`, "--send-rate", "2", "--send-burst", "1");
  try {
    await serving(server.url, { user: "dave" });
    const client = new ChatClient({ targets: [server.url], transport, user: "dave" });
    const refused = await client.joinRoom("missing").catch((e) => e);
    check(refused instanceof ChatroomError && refused.code === Code.NotFound && refused.reason === "ROOM_NOT_FOUND",
      `join a missing room: ${refused}`);
    check(!refused.retryable, "not retryable");
    const bad = await client.createRoom("no spaces allowed").catch((e) => e);
    check(bad.reason === "INVALID_ARGUMENT" && bad.fieldViolations[0]?.field === "room_id", `a bad id: ${bad}`);
    await client.enterRoom("limited");
    const started = Date.now();
    const seqs = [];
    for (let i = 0; i < 4; i++) seqs.push(Number((await client.send("limited", `s${i}`)).seq));
    const elapsed = (Date.now() - started) / 1000;
    check(JSON.stringify(seqs) === "[1,2,3,4]", `seqs ${seqs}`);
    check(elapsed >= 1.2, `four sends at 2/s took ${elapsed}s: each waited its RetryInfo`);
    await sleep(600);
    const short = new ChatClient({ targets: [server.url], transport, user: "dave", retryFor: 0.1 });
    await short.send("limited", "x");
    const limited = await short.send("limited", "y").catch((e) => e);
    check(limited.reason === "RATE_LIMITED" && limited.retryAfter > 0 && limited.retryAfter <= 1, `${limited}`);
    console.log("ok  typed errors (reason, BadRequest field, RetryInfo), rate-limited sends wait and succeed");
  } finally {
    await server.kill("SIGTERM");
  }
}

/** An HS256 JWT (what an application's token endpoint would hand out). */
function hs256(claims, secret) {
  const part = (value) => Buffer.from(JSON.stringify(value)).toString("base64url");
  const body = `${part({ alg: "HS256", typ: "JWT" })}.${part(claims)}`;
  return `${body}.${createHmac("sha256", secret).update(body).digest("base64url")}`;
}

async function tokensAreRefreshed(dir) {
  const secret = "a secret for the client tests, 32+ bytes long";
  const server = await Server.start(`sqlite://${dir}/tokens.db`, "--auth", "jwt", "--jwt-secret", secret);
  let minted = 0;
  const tokenProvider = () => {
    minted += 1;
    return hs256({ sub: "erin", exp: Math.floor(Date.now() / 1000) + 3 }, secret);
  };
  try {
    await serving(server.url, { token: hs256({ sub: "erin", exp: Math.floor(Date.now() / 1000) + 60 }, secret) });
    const client = new ChatClient({ targets: [server.url], transport, tokenProvider });
    await client.enterRoom("t");
    const session = client.session();
    await session.attach("t", 0n);
    const count = 16;
    const { messages, acked, events } = await flow(client, session, "t", count, 1000);
    assertExactlyOnce(messages, acked, "a session on 3-second tokens");
    check(!events.some((e) => e.type === "reconnecting" || e.type === "failed"),
      `the stream outlived its tokens without breaking: ${events.filter((e) => e.type !== "message").map((e) => e.type)}`);
    check(minted >= 5, `tokens minted: ${minted}`);
    console.log(`ok  a session kept for ${count} s on 3-second tokens (${minted} minted), never broken`);
  } finally {
    await server.kill("SIGTERM");
  }
}

const dir = mkdtempSync(join(tmpdir(), "chatroom-ts-"));
try {
  await errorsAndRateLimits(dir);
  await aKilledAndRestartedNode(dir);
  await aKilledClusterNode();
  await tokensAreRefreshed(dir);
} finally {
  rmSync(dir, { recursive: true, force: true });
}

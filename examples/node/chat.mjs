// From zero to a live room in Node.js, with the chatroom-client library
// (clients/typescript) over gRPC (@connectrpc/connect-node, which it brings).
//
//     (cd clients/typescript && npm ci) && cd examples/node && npm ci && node chat.mjs --target 127.0.0.1:50051
//
// The same flow as examples/python/chat.py: alice enters a room (bob joins), opens a
// session, attaches the room from its start, sends; she receives her messages and
// bob's in seq order; joining a missing room says ROOM_NOT_FOUND. What the app does not
// write: reconnecting and resuming. If the stream breaks, the session attaches the room
// again after the last seq it delivered (the library's tests kill the server under it).
// Exit status 0 means every step held.

import { randomUUID } from "node:crypto";
import { parseArgs } from "node:util";

import { ChatClient, ChatroomError } from "chatroom-client";
import { grpcTransport } from "chatroom-client/node";

const { values: args } = parseArgs({
  options: {
    target: { type: "string", default: "127.0.0.1:50051" },
    room: { type: "string", default: `node-${randomUUID().slice(0, 8)}` },
  },
});

function check(condition, what) {
  if (!condition) {
    console.log(`FAILED: ${what}`);
    process.exit(1);
  }
}

/** The next `count` messages the session delivers (a timeout fails the example). */
async function messages(session, count) {
  const got = [];
  const timer = setTimeout(() => check(false, `only ${got.length} of ${count} messages arrived`), 10_000);
  for await (const event of session) {
    if (event.type === "message") got.push(event.message);
    if (got.length === count) break;
  }
  clearTimeout(timer);
  return got;
}

// x-user-id names the caller (the server's default --auth header); with --auth jwt
// pass token or tokenProvider instead.
const url = `http://${args.target}`;
const alice = new ChatClient({ targets: [url], transport: grpcTransport, user: "alice" });
const bob = new ChatClient({ targets: [url], transport: grpcTransport, user: "bob" });
const room = args.room;

// 1. Enter: creates the room, or joins it.
const { created } = await alice.enterRoom(room, "Node example", "Alice");
console.log(`alice entered ${room} (created: ${created})`);
await bob.joinRoom(room, "Bob");
console.log("bob joined");

// 2-3. A session: attach from the start, send, receive in order.
const session = alice.session();
const attached = await session.attach(room, 0n);
console.log(`attached at seq ${attached.lastSeq}`);
for (const text of ["hello", "from", "node"]) {
  const sent = await alice.send(room, text);
  console.log(`alice sent "${text}": seq ${sent.seq}`);
}
await bob.send(room, "hi alice");
const got = await messages(session, 4);
check(JSON.stringify(got.map((m) => [m.text, m.senderId])) ===
  JSON.stringify([["hello", "alice"], ["from", "alice"], ["node", "alice"], ["hi alice", "bob"]]), "the messages");
check(got.map((m) => Number(m.seq)).join() === "1,2,3,4", "their seqs");
console.log(`received in order: ${got.map((m) => m.text).join(", ")}; resumes after seq ${session.attached.get(room)} if the stream breaks`);
session.close();

// 4. Errors carry a stable reason.
const refused = await bob.joinRoom(`${room}-missing`).catch((error) => error);
check(refused instanceof ChatroomError && refused.reason === "ROOM_NOT_FOUND", `error: ${refused}`);
console.log(`joining a missing room: ${refused.codeName} ${refused.reason}`);
console.log("node example: every step held");

// From zero to a live room in Node.js: @grpc/grpc-js with stubs loaded from the
// chatroom proto at run time by @grpc/proto-loader.
//
//     cd examples/node && npm ci && node chat.mjs --target 127.0.0.1:50051
//
// The same flow as examples/python/chat.py: alice enters a room and attaches it on a
// Subscribe stream, sends on the stream and receives live; the stream is lost while
// bob sends two messages; she reconnects with after_seq and receives exactly those,
// then live messages again. Exit status 0 means every step held.

import { fileURLToPath } from "node:url";
import path from "node:path";
import { randomUUID } from "node:crypto";
import { parseArgs } from "node:util";

import grpc from "@grpc/grpc-js";
import protoLoader from "@grpc/proto-loader";

const WAIT_MS = 10_000;
const here = path.dirname(fileURLToPath(import.meta.url));

const { values: args } = parseArgs({
  options: {
    target: { type: "string", default: "127.0.0.1:50051" },
    room: { type: "string", default: `node-${randomUUID().slice(0, 8)}` },
  },
});

const definition = protoLoader.loadSync("chatroom/v1/chatroom.proto", {
  includeDirs: [path.join(here, "..", "..", "proto")],
  keepCase: true, // field names as in the proto: room_id, after_seq
  longs: Number, // seqs fit a double for any realistic room
  defaults: true,
  oneofs: true, // `event` names which event a SubscribeResponse carries
});
const { ChatRoomService } = grpc.loadPackageDefinition(definition).chatroom.v1;
const client = new ChatRoomService(args.target, grpc.credentials.createInsecure());

/** Call metadata naming the user (`--auth header`; with `--auth jwt` send
 *  `authorization: Bearer <token>` instead). */
function asUser(user) {
  const metadata = new grpc.Metadata();
  metadata.set("x-user-id", user);
  return metadata;
}

/** A unary call as a promise. */
function call(method, request, user) {
  return new Promise((resolve, reject) =>
    client[method](request, asUser(user), (error, response) =>
      error ? reject(error) : resolve(response),
    ),
  );
}

function check(condition, what) {
  if (!condition) {
    console.log(`FAILED: ${what}`);
    process.exit(1);
  }
}

/** One Subscribe stream: requests are written to it, responses wait in a queue. */
class Stream {
  constructor(user) {
    this.call = client.Subscribe(asUser(user));
    this.nextId = 0;
    this.queued = [];
    this.waiting = null;
    this.call.on("data", (response) => this.push(response));
    this.call.on("error", (error) => {
      if (error.code !== grpc.status.CANCELLED) this.push(error);
    });
  }

  push(item) {
    if (this.waiting) {
      const resolve = this.waiting;
      this.waiting = null;
      resolve(item);
    } else {
      this.queued.push(item);
    }
  }

  async next() {
    const item = this.queued.length
      ? this.queued.shift()
      : await new Promise((resolve, reject) => {
          const timer = setTimeout(() => reject(new Error("no event in time")), WAIT_MS);
          this.waiting = (value) => {
            clearTimeout(timer);
            resolve(value);
          };
        });
    if (item instanceof Error) throw item;
    return item;
  }

  request(frame) {
    const request_id = String(++this.nextId);
    this.call.write({ request_id, ...frame });
    return request_id;
  }

  /** The answer to one request; messages that arrive first are kept for `messages`. */
  async reply(requestId) {
    this.backlog ??= [];
    for (;;) {
      const response = await this.next();
      if (response.request_id === requestId) return response;
      if (response.event === "message") this.backlog.push(response.message);
    }
  }

  async attach(room_id, after_seq) {
    const attach = after_seq === undefined ? { room_id } : { room_id, after_seq };
    const response = await this.reply(this.request({ attach }));
    check(response.event === "attached", `attach failed: ${JSON.stringify(response)}`);
    return response.attached;
  }

  /** The next `count` CHAT messages, in arrival order. */
  async messages(count) {
    const got = this.backlog ?? [];
    this.backlog = [];
    while (got.length < count) {
      const response = await this.next();
      if (response.event === "message") got.push(response.message);
    }
    this.backlog = got.slice(count);
    return got.slice(0, count);
  }

  close() {
    this.call.cancel();
  }
}

const room_id = args.room;

// 1. Enter: creates the room, or joins it.
const entered = await call(
  "EnterRoom",
  { room_id, name: "Node example", display_name: "Alice" },
  "alice",
);
console.log(`alice entered ${room_id} (created: ${entered.created})`);
await call("JoinRoom", { room_id, display_name: "Bob" }, "bob");
console.log("bob joined");

// 2-3. Attach, send on the stream, receive live.
let stream = new Stream("alice");
const attached = await stream.attach(room_id);
console.log(`attached at seq ${attached.room.last_seq}`);
for (const text of ["hello", "from", "node"]) {
  const ack = await stream.reply(stream.request({ send: { room_id, text } }));
  check(ack.event === "send_ack", `send failed: ${JSON.stringify(ack)}`);
}
const live = await stream.messages(3);
check(
  JSON.stringify(live.map((m) => m.text)) === JSON.stringify(["hello", "from", "node"]),
  `live messages: ${JSON.stringify(live)}`,
);
const lastSeq = live[2].seq;
console.log(`received live: ${live.map((m) => m.text).join(", ")} (last seq ${lastSeq})`);

// 4. The stream is lost; bob goes on talking.
stream.close();
for (const text of ["you", "missed this"]) {
  await call("SendMessage", { room_id, text }, "bob");
}
console.log("stream closed; bob sent 2 messages meanwhile");

// 5. Reconnect and resume after the last seq processed.
stream = new Stream("alice");
const resumed = await stream.attach(room_id, lastSeq);
check(!resumed.history_truncated, "history was truncated");
const missed = await stream.messages(2);
check(
  JSON.stringify(missed.map((m) => [m.text, m.sender_id, m.seq])) ===
    JSON.stringify([
      ["you", "bob", lastSeq + 1],
      ["missed this", "bob", lastSeq + 2],
    ]),
  `missed messages: ${JSON.stringify(missed)}`,
);
console.log(`resumed after seq ${lastSeq}: ${missed.map((m) => m.text).join(", ")}`);
await call("SendMessage", { room_id, text: "welcome back" }, "bob");
const [again] = await stream.messages(1);
check(again.text === "welcome back", `live after resume: ${JSON.stringify(again)}`);
console.log("live again: welcome back");
stream.close();
client.close();
console.log("node example: every step held");

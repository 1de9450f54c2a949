// The chat page: enter a room with a nickname, see its history and live messages
// and member events, send. Everything goes over gRPC-Web to the chatroom server
// (`?server=http://host:port`, default http://127.0.0.1:50051), which must list
// this page's origin in --cors-origins.
//
// A browser cannot drive the bidirectional Subscribe stream (fetch cannot send a
// request body while it reads the response), so the page receives with the
// server-streaming Listen — the same attach and resume semantics — and sends with
// the unary SendMessage.

import { createClient, ConnectError } from "@connectrpc/connect";
import { createGrpcWebTransport } from "@connectrpc/connect-web";
import { ChatRoomService, type Message } from "./gen/chatroom/v1/chatroom_pb.js";

const HISTORY = 50n;

const server = new URLSearchParams(location.search).get("server") ?? "http://127.0.0.1:50051";
const client = createClient(ChatRoomService, createGrpcWebTransport({ baseUrl: server }));

const $ = <T extends HTMLElement>(id: string) => document.getElementById(id) as T;
const log = $<HTMLUListElement>("log");

function line(text: string, className?: string, who?: string) {
  const item = document.createElement("li");
  if (className) item.className = className;
  if (who) {
    const name = document.createElement("b");
    name.textContent = `${who}: `;
    item.append(name);
  }
  item.append(text);
  log.append(item);
  log.scrollTop = log.scrollHeight;
}

function status(text: string) {
  $("status").textContent = text;
}

/** Who this page is, sent with every call (the server's `--auth header` mode). */
let headers: Record<string, string> = {};
let roomId = "";
/** The highest seq shown: where to resume after the stream drops. */
let lastSeq = 0n;

async function enter(nickname: string, room: string) {
  headers = { "x-user-id": nickname };
  roomId = room;
  const { room: entered, created } = await client.enterRoom(
    { roomId: room, name: room, displayName: nickname },
    { headers },
  );
  const last = entered?.lastSeq ?? 0n;
  lastSeq = last > HISTORY ? last - HISTORY : 0n;
  $("enter").hidden = true;
  $("chat").hidden = false;
  status(`${nickname} in ${room}${created ? " (new room)" : ""}`);
  void listen();
}

/** Receives the room until the page closes, resuming after `lastSeq` when dropped. */
async function listen() {
  for (;;) {
    try {
      const events = client.listen({ rooms: [{ roomId, afterSeq: lastSeq }] }, { headers });
      for await (const response of events) {
        const event = response.event;
        switch (event.case) {
          case "message":
            show(event.value);
            break;
          case "membersJoined":
            for (const m of event.value.members) line(`${m.displayName} joined`, "event");
            break;
          case "membersLeft":
            for (const m of event.value.members) line(`${m.displayName} left`, "event");
            break;
          case "attached":
            if (event.value.historyTruncated) line("(older messages were deleted)", "event");
            break;
          case "error":
            line(`${event.value.reason}: ${event.value.message}`, "error");
            break;
        }
      }
      status("the room was closed");
      return;
    } catch (error) {
      line(`disconnected (${ConnectError.from(error).code}); reconnecting…`, "error");
      await new Promise((resolve) => setTimeout(resolve, 1000));
    }
  }
}

function show(message: Message) {
  if (message.seq !== 0n && message.seq <= lastSeq) return; // already shown
  if (message.seq !== 0n) lastSeq = message.seq;
  line(message.text, "message", message.senderName);
}

$("enter").addEventListener("submit", (e) => {
  e.preventDefault();
  const nickname = $<HTMLInputElement>("nickname").value.trim();
  const room = $<HTMLInputElement>("room").value.trim();
  enter(nickname, room).catch((error) => status(`could not enter: ${ConnectError.from(error).message}`));
});

$("send").addEventListener("submit", (e) => {
  e.preventDefault();
  const input = $<HTMLInputElement>("text");
  const text = input.value;
  input.value = "";
  client
    .sendMessage({ roomId, text }, { headers })
    .catch((error) => line(`not sent: ${ConnectError.from(error).message}`, "error"));
});

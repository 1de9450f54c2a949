// The chat page: sign in with a name or a token, enter a room, see its history, its
// live messages and its members (online or not), send, switch rooms, leave. Built on
// the chatroom-client library over gRPC-Web (`?server=http://host:port`, default
// http://127.0.0.1:50051; the server must list this page's origin in
// --cors-origins). The library's session receives with Listen — a browser cannot
// drive the bidirectional Subscribe — and when the connection drops it reconnects and
// resumes after the last message shown, which this page only has to display.

import { grpcWebTransport as transport } from "chatroom-client/web";
import { ChatClient, ChatroomError, MessageKind, type Member, type Message, type Session, type SessionEvent } from "chatroom-client";

const HISTORY = 50n;
const MEMBERS_EVERY_MS = 3000;

const server = new URLSearchParams(location.search).get("server") ?? "http://127.0.0.1:50051";

const $ = <T extends HTMLElement = HTMLElement>(id: string) => document.getElementById(id) as T;
const input = (id: string) => $<HTMLInputElement>(id);

let client: ChatClient | undefined;
let session: Session | undefined;
/** Who this page is: the name given, or the token's `sub`. */
let me = "";
let roomId = "";
let membersTimer: ReturnType<typeof setInterval> | undefined;

// -- what the page shows ------------------------------------------------------

/** Shows an error where it cannot be missed, with what the server said. */
function showError(what: string, error: unknown) {
  const e = ChatroomError.from(error);
  const fields = e.fieldViolations.map((v) => `${v.field}: ${v.description}`).join("; ");
  const box = $("error");
  box.querySelector("p")!.textContent = `${what}: ${e.reason || e.codeName} — ${fields || e.message}`;
  box.hidden = false;
}

function clearError() {
  $("error").hidden = true;
}

function connection(text: string, state: "ok" | "warn" | "" = "") {
  const badge = $("connection");
  badge.textContent = text;
  badge.className = state;
}

function logLine(build: (item: HTMLLIElement) => void) {
  const log = $<HTMLUListElement>("log");
  const item = document.createElement("li");
  build(item);
  log.append(item);
  log.scrollTop = log.scrollHeight;
}

function note(text: string, className: "event" | "problem" = "event") {
  logLine((item) => {
    item.className = className;
    item.textContent = text;
  });
}

function showMessage(message: Message) {
  if (message.kind === MessageKind.RECALL || message.kind === MessageKind.EDIT) {
    note(`${message.senderName || message.senderId} ${message.kind === MessageKind.RECALL ? "recalled" : "edited"} message #${message.targetSeq}`);
    return;
  }
  logLine((item) => {
    item.className = message.senderId === me ? "message mine" : "message";
    item.dataset.seq = String(message.seq);
    const sent = message.sentAt ? new Date(Number(message.sentAt.seconds) * 1000) : new Date();
    const time = document.createElement("time");
    time.dateTime = sent.toISOString();
    time.textContent = sent.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit", second: "2-digit" });
    const who = document.createElement("span");
    who.className = "who";
    who.textContent = message.senderId === me ? "you" : message.senderName || message.senderId;
    const text = document.createElement("span");
    text.className = "text";
    text.textContent = message.text;
    item.append(time, who, text);
  });
}

function showMembers(members: Member[]) {
  const list = $<HTMLUListElement>("members");
  list.replaceChildren(
    ...members
      .sort((a, b) => Number(b.online) - Number(a.online) || a.userId.localeCompare(b.userId))
      .map((member) => {
        const item = document.createElement("li");
        item.className = member.online ? "online" : "offline";
        item.dataset.user = member.userId;
        const dot = document.createElement("span");
        dot.className = "dot";
        const state = document.createElement("span");
        state.className = "state";
        state.textContent = member.online ? " online" : " away";
        const name = member.displayName || member.userId;
        item.append(dot, member.userId === me ? `${name} (you)` : name, state);
        return item;
      }),
  );
}

async function refreshMembers() {
  if (!client || !roomId) return;
  const room = roomId;
  try {
    const { members } = await client.call((rpc, options) => rpc.listMembers({ roomId: room, pageSize: 100 }, options));
    if (room === roomId) showMembers(members);
  } catch {
    // The connection is down: the badge says so, the next refresh tries again.
  }
}

// -- the session --------------------------------------------------------------

function onEvent(event: SessionEvent) {
  switch (event.type) {
    case "message":
      if (event.message.roomId === roomId) showMessage(event.message);
      return;
    case "reconnecting":
      connection(`connection lost (${event.error?.reason || event.error?.codeName || "closed"}): reconnecting in ${event.delay.toFixed(1)} s…`, "warn");
      return;
    case "resumed":
      connection(`connected to ${event.target}`, "ok");
      note(`reconnected: resumed after message #${event.afterSeq ?? 0}`);
      void refreshMembers();
      return;
    case "historyTruncated":
      note("older messages were deleted by the server's retention");
      return;
    case "roomLost":
      if (event.roomId === roomId) {
        note(event.error ? `removed from the room: ${event.error.reason}` : "you are no longer in this room", "problem");
      }
      return;
    case "failed":
      connection("disconnected", "warn");
      showError("The connection was refused", event.error);
      return;
    case "event": {
      const e = event.response.event;
      if (e.case === "membersJoined") for (const m of e.value.members) note(`${m.displayName || m.userId} joined`);
      if (e.case === "membersLeft") for (const m of e.value.members) note(`${m.displayName || m.userId} left`);
      if (e.case === "membersJoined" || e.case === "membersLeft") void refreshMembers();
    }
  }
}

/** Enters `room` (created if new) and shows it: the last messages, then live ones. */
async function showRoom(room: string, displayName: string) {
  const { room: entered, created } = await client!.enterRoom(room, room, displayName);
  roomId = room;
  $<HTMLUListElement>("log").replaceChildren();
  $("room-title").textContent = `# ${room}`;
  const last = entered?.lastSeq ?? 0n;
  session ??= client!.session({ onEvent });
  await session.attach(room, last > HISTORY ? last - HISTORY : 0n);
  if (created) note(`you created ${room}`);
  connection(`connected to ${client!.target}`, "ok");
  $("signin").hidden = true;
  $("chat").hidden = false;
  await refreshMembers();
}

function signIn(): { user?: string; token?: string; who: string } {
  const mode = (document.querySelector("input[name=mode]:checked") as HTMLInputElement).value;
  if (mode === "token") {
    const token = $<HTMLTextAreaElement>("token").value.trim();
    let sub = "";
    try {
      sub = JSON.parse(atob(token.split(".")[1].replace(/-/g, "+").replace(/_/g, "/"))).sub ?? "";
    } catch {
      // Not a JWT: the server says why when entering.
    }
    return { token, who: sub };
  }
  const user = input("nickname").value.trim();
  return { user, who: user };
}

$("enter").addEventListener("submit", (e) => {
  e.preventDefault();
  clearError();
  const { user, token, who } = signIn();
  client = new ChatClient({ targets: [server], transport, user, token, retryFor: 10 });
  session = undefined;
  me = who;
  const displayName = user ?? "";
  showRoom(input("room").value.trim(), displayName)
    .then(() => {
      $("me").textContent = `signed in as ${me}`;
      membersTimer ??= setInterval(() => void refreshMembers(), MEMBERS_EVERY_MS);
    })
    .catch((error) => showError("Could not enter the room", error));
});

$("send").addEventListener("submit", (e) => {
  e.preventDefault();
  const text = input("text");
  const message = text.value;
  text.value = "";
  client!.send(roomId, message).catch((error) => {
    showError("Not sent", error);
    text.value = message;
  });
});

$("switch").addEventListener("submit", (e) => {
  e.preventDefault();
  clearError();
  const from = roomId;
  const to = input("switch-to").value.trim();
  showRoom(to, "")
    .then(async () => {
      session!.detach(from);
      await client!.leaveRoom(from);
      input("switch-to").value = "";
    })
    .catch((error) => showError(`Could not switch to ${to}`, error));
});

$("leave").addEventListener("click", () => {
  clearError();
  const room = roomId;
  session!.detach(room);
  client!
    .leaveRoom(room)
    .then(() => {
      roomId = "";
      $("chat").hidden = true;
      $("signin").hidden = false;
      const notice = $("notice");
      notice.textContent = `You left ${room}.`;
      notice.hidden = false;
    })
    .catch((error) => showError("Could not leave", error));
});

for (const radio of document.querySelectorAll<HTMLInputElement>("input[name=mode]")) {
  radio.addEventListener("change", () => {
    const token = radio.value === "token" && radio.checked;
    $("token-field").hidden = !token;
    $("name-field").hidden = token;
    input("nickname").required = !token;
    $<HTMLTextAreaElement>("token").required = token;
  });
}
input("nickname").required = true;
$("error").querySelector("button")!.addEventListener("click", clearError);

// A stream of attached rooms that survives its connection: the piece of client code
// that decides whether messages are lost.
//
// The session receives with Listen (server streaming: it works over gRPC-Web in a
// browser as over gRPC in Node) and remembers, per room, the highest seq it has
// delivered. When the stream breaks — the node restarts or is killed, the network
// drops, the token runs out — it listens again with jittered backoff (on the next
// node, if the client has several), every room attached after that seq: the server
// sends every stored message after it, then live ones, so each stored message is
// delivered once, in order, with no gap. One seen again across the seam is dropped
// here; a jump the server announces (history deleted by retention) is delivered as a
// `historyTruncated` event, never hidden. Attaching or detaching a room listens again
// with the new set, resuming the others the same way.

import { Code } from "@connectrpc/connect";
import type { ChatClient } from "./client.js";
import { Backoff, sleep } from "./backoff.js";
import { ChatroomError } from "./errors.js";
import type { DetachReason, Message, Room, SubscribeResponse } from "./gen/chatroom/v1/chatroom_pb.js";

export type SessionEvent =
  /** A message: stored kinds (seq > 0) once each in seq order per room; BARRAGE and
   * COMMAND (seq 0) as they come (never stored: what a broken stream missed is gone). */
  | { type: "message"; message: Message }
  /** Messages of the room before `resumesAtSeq` were deleted by retention before they
   * could be delivered (undefined: up to the next message delivered). */
  | { type: "historyTruncated"; roomId: string; resumesAtSeq?: bigint }
  /** The room is no longer attached: left, kicked, banned, deleted (`reason`), or
   * attaching it again was refused (`error`). It is not attached again. */
  | { type: "roomLost"; roomId: string; reason?: DetachReason; error?: ChatroomError }
  /** The stream broke (`error`); the session listens again in `delay` seconds. */
  | { type: "reconnecting"; error?: ChatroomError; delay: number }
  /** The stream is back on `target`; the room resumed after `afterSeq`. */
  | { type: "resumed"; target: string; roomId: string; afterSeq?: bigint }
  /** Any other event of the room (members joined or left, room updated, ...). */
  | { type: "event"; response: SubscribeResponse }
  /** An error retrying cannot fix (a token refused for good): the session has ended. */
  | { type: "failed"; error: ChatroomError };

export interface SessionOptions {
  backoff?: Backoff;
  /** Receives every event as it happens. Without it, iterate the session
   * (`for await (const event of session)`). */
  onEvent?: (event: SessionEvent) => void;
}

interface Waiter {
  resolve: (room: Room) => void;
  reject: (error: ChatroomError) => void;
}

/** Why the current stream was ended on purpose. */
type Restart = "rooms" | "token" | "close";

export class Session implements AsyncIterable<SessionEvent> {
  private readonly rooms = new Map<string, { lastSeq?: bigint }>();
  private readonly waiting = new Map<string, Waiter>();
  private readonly backoff: Backoff;
  private readonly queue: (SessionEvent | undefined)[] = [];
  private wake: (() => void) | undefined;
  private current: AbortController | undefined;
  private restart: Restart | undefined;
  private idle: (() => void) | undefined;
  private running = false;
  private closed = false;

  constructor(
    readonly client: ChatClient,
    private readonly options: SessionOptions = {},
  ) {
    this.backoff = options.backoff ?? new Backoff();
  }

  /** The attached rooms and the highest seq delivered of each. */
  get attached(): Map<string, bigint | undefined> {
    return new Map([...this.rooms].map(([roomId, room]) => [roomId, room.lastSeq]));
  }

  /** Starts receiving `roomId` (its member only): every stored message after
   * `afterSeq`, then live ones; `afterSeq` undefined: live from now. Resolves with the
   * room as attached; rejects with `ChatroomError` if refused (it is then not kept). */
  attach(roomId: string, afterSeq?: bigint): Promise<Room> {
    this.rooms.set(roomId, { lastSeq: afterSeq });
    const attached = new Promise<Room>((resolve, reject) => this.waiting.set(roomId, { resolve, reject }));
    this.listenAgain();
    return attached;
  }

  /** Stops receiving `roomId`. */
  detach(roomId: string): void {
    if (this.rooms.delete(roomId)) this.listenAgain();
  }

  /** Ends the stream and the iteration. */
  close(): void {
    this.closed = true;
    this.end("close");
    this.idle?.();
    this.push(undefined);
  }

  async *[Symbol.asyncIterator](): AsyncIterator<SessionEvent> {
    for (;;) {
      while (this.queue.length === 0) await new Promise<void>((resolve) => (this.wake = resolve));
      const event = this.queue.shift();
      if (event === undefined) return;
      yield event;
    }
  }

  private push(event: SessionEvent | undefined): void {
    if (event !== undefined && this.options.onEvent) {
      this.options.onEvent(event);
      return;
    }
    this.queue.push(event);
    this.wake?.();
  }

  /** Listens again with the rooms as they are now (at once, no backoff). */
  private listenAgain(): void {
    if (!this.running) {
      this.running = true;
      void this.run();
    }
    this.end("rooms");
    this.idle?.();
  }

  private end(why: Restart): void {
    if (this.current && !this.current.signal.aborted) {
      this.restart = why;
      this.current.abort();
    }
  }

  private async run(): Promise<void> {
    let freshToken = false;
    let resuming = false;
    while (!this.closed) {
      if (this.rooms.size === 0) {
        await new Promise<void>((resolve) => (this.idle = resolve));
        continue;
      }
      const abort = new AbortController();
      this.current = abort;
      this.restart = undefined;
      let error: ChatroomError | undefined;
      try {
        await this.listen(abort.signal, freshToken, resuming);
        // The server ended the stream: every room left, or it is stopping.
        error = new ChatroomError(Code.Unavailable, "the stream ended");
      } catch (raw) {
        if (!abort.signal.aborted) error = ChatroomError.from(raw);
      }
      if (this.closed) return;
      if (this.restart !== undefined || this.rooms.size === 0) {
        // Ended on purpose (rooms changed, a token to renew): listen again at once,
        // not a reconnect the application needs to hear of.
        freshToken = this.restart === "token";
        resuming = false;
        continue;
      }
      freshToken = error?.reason === "TOKEN_EXPIRED";
      if (error && !this.reconnectsAfter(error)) {
        this.fail(error);
        return;
      }
      const delay = freshToken ? 0 : this.backoff.next();
      this.push({ type: "reconnecting", error, delay });
      this.client.nextTarget();
      resuming = true;
      await sleep(delay);
    }
  }

  /** UNAVAILABLE and deadlines; a stream cut without a status (INTERNAL, UNKNOWN,
   * CANCELED by the server); an expired token while a provider can give a fresh one. */
  private reconnectsAfter(error: ChatroomError): boolean {
    if (error.reason === "TOKEN_EXPIRED") return this.client.refreshesTokens;
    return error.retryable || [Code.Internal, Code.Unknown, Code.Canceled, Code.Aborted].includes(error.code);
  }

  private fail(error: ChatroomError): void {
    for (const waiter of this.waiting.values()) waiter.reject(error);
    this.waiting.clear();
    this.closed = true;
    this.push({ type: "failed", error });
    this.push(undefined);
  }

  private async listen(signal: AbortSignal, freshToken: boolean, resuming: boolean): Promise<void> {
    // The request ids of per-room answers are the rooms' places in this list.
    const rooms = [...this.rooms].map(([roomId, room]) => ({ roomId, afterSeq: room.lastSeq }));
    const headers = await this.client.headers(freshToken);
    const target = this.client.target;
    const timer = this.refreshTimer();
    try {
      const stream = this.client.rpc.listen({ rooms }, { headers, signal });
      for await (const response of stream) {
        this.receive(response, rooms, target, resuming);
      }
    } finally {
      clearTimeout(timer);
    }
  }

  /** A Listen stream cannot be handed a fresh token: it is listened again with one,
   * resuming every room, before the current token expires (the server would end it). */
  private refreshTimer(): ReturnType<typeof setTimeout> | undefined {
    if (!this.client.refreshesTokens) return undefined;
    const expiry = this.client.tokenExpiry();
    if (expiry === undefined) return undefined;
    const wait = Math.max(this.client.refreshAt(expiry) * 1000 - Date.now(), 50);
    return setTimeout(() => this.end("token"), wait);
  }

  private receive(
    response: SubscribeResponse,
    rooms: { roomId: string; afterSeq?: bigint }[],
    target: string,
    resuming: boolean,
  ): void {
    const event = response.event;
    switch (event.case) {
      case "attached": {
        this.backoff.reset();
        const room = event.value.room!;
        const state = this.rooms.get(room.roomId);
        if (state && state.lastSeq === undefined) state.lastSeq = room.lastSeq;
        if (event.value.historyTruncated) this.push({ type: "historyTruncated", roomId: room.roomId });
        const waiter = this.waiting.get(room.roomId);
        this.waiting.delete(room.roomId);
        if (waiter) waiter.resolve(room);
        else if (resuming) {
          const afterSeq = rooms.find((r) => r.roomId === room.roomId)?.afterSeq;
          this.push({ type: "resumed", target, roomId: room.roomId, afterSeq });
        }
        return;
      }
      case "message": {
        const message = event.value;
        const state = this.rooms.get(message.roomId);
        if (!state) return; // detached meanwhile
        if (message.seq > 0n) {
          if (state.lastSeq !== undefined && message.seq <= state.lastSeq) return; // seen: the seam of a resume
          state.lastSeq = message.seq;
        }
        this.push({ type: "message", message });
        return;
      }
      case "historyTruncated": {
        const state = this.rooms.get(event.value.roomId);
        if (state) state.lastSeq = event.value.resumesAtSeq - 1n;
        this.push({ type: "historyTruncated", roomId: event.value.roomId, resumesAtSeq: event.value.resumesAtSeq });
        return;
      }
      case "detached":
        if (this.rooms.delete(event.value.roomId)) {
          this.push({ type: "roomLost", roomId: event.value.roomId, reason: event.value.reason });
        }
        return;
      case "error": {
        const roomId = rooms[Number(response.requestId)]?.roomId;
        const error = ChatroomError.fromStreamError(event.value);
        if (roomId === undefined) {
          this.push({ type: "event", response });
          return;
        }
        this.rooms.delete(roomId);
        const waiter = this.waiting.get(roomId);
        this.waiting.delete(roomId);
        if (waiter) waiter.reject(error);
        else this.push({ type: "roomLost", roomId, error });
        return;
      }
      case "pong":
      case "tokenRefreshed":
      case "sendAck":
        return;
      default:
        this.push({ type: "event", response });
    }
  }
}

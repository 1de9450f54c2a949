// The client: calls to one of the service's nodes with the caller's identity,
// retrying what is safe to retry, on any connect Transport — gRPC from Node
// (@connectrpc/connect-node) or gRPC-Web from a browser (@connectrpc/connect-web).

import { createClient, type CallOptions, type Client, type Transport } from "@connectrpc/connect";
import { Code } from "@connectrpc/connect";
import { ChatRoomService, MessageKind, type EnterRoomResponse, type Message, type Room } from "./gen/chatroom/v1/chatroom_pb.js";
import { Backoff, sleep } from "./backoff.js";
import { ChatroomError } from "./errors.js";
import { Session, type SessionOptions } from "./session.js";

/** Returns a fresh bearer token (called before the current one expires). */
export type TokenProvider = () => string | Promise<string>;

export interface ChatClientOptions {
  /** The nodes, tried in turn: what `transport` is made from (a base URL such as
   * `http://127.0.0.1:50051`). When one stops answering, the next is used. */
  targets: string | string[];
  /** Makes the transport for a target: `(url) => createGrpcTransport({ baseUrl: url })`
   * in Node, `createGrpcWebTransport` in a browser. */
  transport: (target: string) => Transport;
  /** The user id (the server's `--auth header` mode, for trusted backends). */
  user?: string;
  /** A bearer token (`--auth jwt`). */
  token?: string;
  /** Or a function returning a fresh token, called before the current one expires and
   * whenever the server says it has. */
  tokenProvider?: TokenProvider;
  /** How long a call that may be retried keeps trying, in seconds (default 30). */
  retryFor?: number;
  /** How long before a token's expiry a fresh one is fetched, in seconds (default 30;
   * half the remaining lifetime for shorter tokens). */
  refreshMargin?: number;
}

/** A JWT's `exp` (Unix seconds), read without verifying it. */
export function tokenExpiry(token: string): number | undefined {
  try {
    const payload = token.split(".")[1].replace(/-/g, "+").replace(/_/g, "/");
    const exp = JSON.parse(atob(payload + "=".repeat((4 - (payload.length % 4)) % 4))).exp;
    return typeof exp === "number" ? exp : undefined;
  } catch {
    return undefined;
  }
}

type Service = Client<typeof ChatRoomService>;

/** Options of `send`. */
export interface SendOptions {
  kind?: MessageKind;
  payload?: Uint8Array;
  contentType?: string;
  toUserIds?: string[];
  /** The idempotency key; a fresh UUID unless given. */
  clientMsgId?: string;
}

export class ChatClient {
  readonly targets: string[];
  readonly retryFor: number;
  readonly refreshMargin: number;
  private index = 0;
  private service: Service | undefined;
  private currentToken: string | undefined;

  constructor(private readonly options: ChatClientOptions) {
    const targets = typeof options.targets === "string" ? options.targets.split(",") : options.targets;
    this.targets = targets.map((t) => t.trim()).filter((t) => t.length > 0);
    if (this.targets.length === 0) throw new Error("give at least one target");
    const identities = [options.user, options.token, options.tokenProvider].filter((x) => x !== undefined);
    if (identities.length > 1) throw new Error("give one identity: user, token or tokenProvider");
    this.currentToken = options.token;
    this.retryFor = options.retryFor ?? 30;
    this.refreshMargin = options.refreshMargin ?? 30;
  }

  /** The node calls go to now. */
  get target(): string {
    return this.targets[this.index];
  }

  /** The generated client on the current node, for calls this class does not wrap
   * (pass `{ headers: await client.headers() }`). */
  get rpc(): Service {
    this.service ??= createClient(ChatRoomService, this.options.transport(this.target));
    return this.service;
  }

  /** Moves to the next node, after the current one failed. */
  nextTarget(): void {
    if (this.targets.length > 1) {
      this.index = (this.index + 1) % this.targets.length;
      this.service = undefined;
    }
  }

  get refreshesTokens(): boolean {
    return this.options.tokenProvider !== undefined;
  }

  /** The bearer token to send: the provider's, fetched again near its expiry or when
   * `fresh`. */
  async token(fresh = false): Promise<string | undefined> {
    const provider = this.options.tokenProvider;
    if (provider === undefined) return this.currentToken;
    const expiry = this.currentToken ? tokenExpiry(this.currentToken) : undefined;
    if (fresh || this.currentToken === undefined || (expiry !== undefined && Date.now() / 1000 >= this.refreshAt(expiry))) {
      this.currentToken = await provider();
    }
    return this.currentToken;
  }

  /** The current token's expiry (Unix seconds), if it comes from a provider. */
  tokenExpiry(): number | undefined {
    return this.refreshesTokens && this.currentToken ? tokenExpiry(this.currentToken) : undefined;
  }

  /** When a token expiring at `expiry` should be replaced (Unix seconds). */
  refreshAt(expiry: number): number {
    const left = Math.max(expiry - Date.now() / 1000, 0);
    return expiry - Math.min(this.refreshMargin, left / 2);
  }

  /** The call headers naming the caller. */
  async headers(freshToken = false): Promise<Record<string, string>> {
    if (this.options.user !== undefined) return { "x-user-id": this.options.user };
    const token = await this.token(freshToken);
    return token ? { authorization: `Bearer ${token}` } : {};
  }

  /** Runs `call` against the current node. With `retry` (for requests safe to repeat):
   * UNAVAILABLE and deadlines again on the next node with jittered backoff, a refusal
   * with a RetryInfo (RATE_LIMITED) after its delay, an expired token once with a
   * fresh one — for up to `retryFor` seconds. Throws `ChatroomError`. */
  async call<R>(call: (rpc: Service, options: CallOptions) => Promise<R>, { retry = true } = {}): Promise<R> {
    const deadline = Date.now() + this.retryFor * 1000;
    const backoff = new Backoff();
    let freshToken = false;
    for (;;) {
      let error: ChatroomError;
      try {
        return await call(this.rpc, { headers: await this.headers(freshToken) });
      } catch (raw) {
        error = ChatroomError.from(raw);
      }
      const wait = this.retryWait(error, backoff, freshToken);
      if (!retry || wait === undefined || Date.now() + wait * 1000 > deadline) throw error;
      freshToken = error.reason === "TOKEN_EXPIRED";
      if (error.retryable) this.nextTarget();
      await sleep(wait);
    }
  }

  private retryWait(error: ChatroomError, backoff: Backoff, refreshed: boolean): number | undefined {
    if (error.retryable) return backoff.next();
    if (error.code === Code.ResourceExhausted && error.retryAfter !== undefined) return error.retryAfter;
    if (error.reason === "TOKEN_EXPIRED" && this.refreshesTokens && !refreshed) return 0;
    return undefined;
  }

  /** Sends a message and returns it as stored (with its `seq`). It carries a
   * `clientMsgId`, so a retry after UNAVAILABLE — done here until acknowledged —
   * stores it once. */
  async send(roomId: string, text = "", options: SendOptions = {}): Promise<Message> {
    const request = {
      roomId,
      text,
      kind: options.kind ?? MessageKind.CHAT,
      payload: options.payload,
      contentType: options.contentType,
      toUserIds: options.toUserIds,
      clientMsgId: options.clientMsgId ?? crypto.randomUUID(),
    };
    const { message } = await this.call((rpc, o) => rpc.sendMessage(request, o));
    return message!;
  }

  /** Creates a room (ALREADY_EXISTS if taken). Not retried: a retry after a lost
   * answer would say ALREADY_EXISTS for the room it made. */
  async createRoom(roomId: string, name = "", displayName = ""): Promise<Room> {
    const { room } = await this.call((rpc, o) => rpc.createRoom({ roomId, name, displayName }, o), { retry: false });
    return room!;
  }

  /** Joins a room, creating it if there is none (`created` says which). */
  enterRoom(roomId: string, name = "", displayName = ""): Promise<EnterRoomResponse> {
    return this.call((rpc, o) => rpc.enterRoom({ roomId, name, displayName }, o));
  }

  /** Joins an existing room (NOT_FOUND if none); joining twice is fine. */
  async joinRoom(roomId: string, displayName = ""): Promise<Room> {
    const { room } = await this.call((rpc, o) => rpc.joinRoom({ roomId, displayName }, o));
    return room!;
  }

  /** Leaves a room; leaving one is not in is fine. */
  async leaveRoom(roomId: string): Promise<void> {
    await this.call((rpc, o) => rpc.leaveRoom({ roomId }, o));
  }

  async getRoom(roomId: string): Promise<Room> {
    const { room } = await this.call((rpc, o) => rpc.getRoom({ roomId }, o));
    return room!;
  }

  /** One page of a room's stored messages: the newest `limit`, or those after
   * `afterSeq`, oldest first. */
  async listMessages(roomId: string, options: { afterSeq?: bigint; beforeSeq?: bigint; limit?: number } = {}): Promise<Message[]> {
    const { messages } = await this.call((rpc, o) => rpc.listMessages({ roomId, ...options }, o));
    return messages;
  }

  /** A stream of attached rooms that resumes by itself (see `Session`). */
  session(options: SessionOptions = {}): Session {
    return new Session(this, options);
  }
}

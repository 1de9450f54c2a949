// Typed errors: what the server said, with its google.rpc details read out. Every
// refusal carries an ErrorInfo whose `reason` is stable (ROOM_NOT_FOUND, RATE_LIMITED,
// TOKEN_EXPIRED, ...); bad input also a BadRequest naming the field, a refusal to
// retry later a RetryInfo with the delay. Branch on `reason`, not on the message.

import { Code, ConnectError } from "@connectrpc/connect";
import { BadRequestSchema, ErrorInfoSchema, RetryInfoSchema } from "./gen/google/rpc/error_details_pb.js";

/** Codes after which the same request may succeed on a retry (another node, later). */
const RETRYABLE = new Set<Code>([Code.Unavailable, Code.DeadlineExceeded]);

export class ChatroomError extends Error {
  /** The gRPC code. */
  readonly code: Code;
  /** ErrorInfo.reason: ROOM_NOT_FOUND, NOT_A_MEMBER, RATE_LIMITED, ... ("" if none). */
  readonly reason: string;
  /** ErrorInfo.metadata. */
  readonly metadata: Record<string, string>;
  /** BadRequest: the fields that were wrong, and why. */
  readonly fieldViolations: { field: string; description: string }[];
  /** RetryInfo: seconds to wait before retrying, if the server said. */
  readonly retryAfter: number | undefined;

  constructor(
    code: Code,
    message: string,
    details: {
      reason?: string;
      metadata?: Record<string, string>;
      fieldViolations?: { field: string; description: string }[];
      retryAfter?: number;
    } = {},
  ) {
    super(`${Code[code]}${details.reason ? ` ${details.reason}` : ""}: ${message}`);
    this.name = "ChatroomError";
    this.code = code;
    this.reason = details.reason ?? "";
    this.metadata = details.metadata ?? {};
    this.fieldViolations = details.fieldViolations ?? [];
    this.retryAfter = details.retryAfter;
  }

  /** The code's name: "Unavailable", "NotFound", ... */
  get codeName(): string {
    return Code[this.code];
  }

  /** Whether the same request may succeed later (UNAVAILABLE, a deadline). */
  get retryable(): boolean {
    return RETRYABLE.has(this.code);
  }

  /** The error a call or a stream failed with, its details read. */
  static from(error: unknown): ChatroomError {
    if (error instanceof ChatroomError) return error;
    const raw = ConnectError.from(error);
    const info = raw.findDetails(ErrorInfoSchema)[0];
    const bad = raw.findDetails(BadRequestSchema)[0];
    const retry = raw.findDetails(RetryInfoSchema)[0]?.retryDelay;
    return new ChatroomError(raw.code, raw.rawMessage, {
      reason: info?.reason,
      metadata: info ? { ...info.metadata } : undefined,
      fieldViolations: bad?.fieldViolations.map(({ field, description }) => ({ field, description })),
      retryAfter: retry ? Number(retry.seconds) + retry.nanos / 1e9 : undefined,
    });
  }

  /** A StreamError event: a room of a Listen stream that was refused. */
  static fromStreamError(error: { code: number; reason: string; message: string }): ChatroomError {
    const code = error.code in Code ? (error.code as Code) : Code.Unknown;
    return new ChatroomError(code, error.message, { reason: error.reason });
  }
}

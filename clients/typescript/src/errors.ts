/**
 * Typed errors: what the server answers (`ERROR` / `RPC_ERROR`, docs/PROTOCOL.md §4)
 * and what the client itself decides (a timeout, an abort, a closed client).
 */

/** The server's error codes, and the client's own (`DEADLINE_EXCEEDED`, `CANCELLED`, `UNAVAILABLE`). */
export type ErrorCode =
  | "UNAUTHENTICATED"
  | "PERMISSION_DENIED"
  | "INVALID_ARGUMENT"
  | "FAILED_PRECONDITION"
  | "NOT_FOUND"
  | "ALREADY_EXISTS"
  | "CANCELLED"
  | "ABORTED"
  | "UNIMPLEMENTED"
  | "DEADLINE_EXCEEDED"
  | "RESOURCE_EXHAUSTED"
  | "UNAVAILABLE"
  | "INTERNAL";

/** An error payload as the server sends it. */
export interface ErrorPayload {
  code: ErrorCode;
  message: string;
  retryable: boolean;
  retryAfterMs?: number;
  details?: Record<string, unknown>;
}

export class SwitchboardError extends Error {
  readonly code: ErrorCode;
  /** Whether the same message may succeed later. */
  readonly retryable: boolean;
  /** On rate-limit refusals: how long to wait before the same charge would succeed. */
  readonly retryAfterMs: number | undefined;
  readonly details: Record<string, unknown> | undefined;

  constructor(payload: ErrorPayload) {
    super(payload.message);
    this.name = "SwitchboardError";
    this.code = payload.code;
    this.retryable = payload.retryable;
    this.retryAfterMs = payload.retryAfterMs;
    this.details = payload.details;
  }

  /** An error the client raises itself. */
  static local(code: ErrorCode, message: string, retryable: boolean): SwitchboardError {
    return new SwitchboardError({ code, message, retryable });
  }
}

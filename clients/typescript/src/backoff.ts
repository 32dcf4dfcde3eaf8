/**
 * Reconnect delays: exponential backoff with full jitter (a uniform draw between 0 and
 * `min(maxMs, initialMs * 2^attempt)`), so a fleet of clients cut off together does
 * not come back together.
 */

export interface BackoffOptions {
  /** The bound of the first retry's draw. Default 250 ms. */
  initialMs?: number;
  /** The largest bound. Default 30 s. */
  maxMs?: number;
}

export const DEFAULT_BACKOFF = { initialMs: 250, maxMs: 30_000 } as const;

/** The delay before retry number `attempt` (0 for the first). */
export function backoffDelay(attempt: number, options: BackoffOptions = {}, random: () => number = Math.random): number {
  const initial = options.initialMs ?? DEFAULT_BACKOFF.initialMs;
  const max = options.maxMs ?? DEFAULT_BACKOFF.maxMs;
  const bound = Math.min(max, initial * 2 ** Math.min(attempt, 30));
  return Math.floor(random() * bound);
}

/**
 * `Client`: one logical connection to a Switchboard app that survives the server's
 * own reasons to drop it (a drain, a slow-consumer cut, a lost network, a token
 * expiry), per docs/PROTOCOL.md: the `$ws:open` handshake, requests by correlation id,
 * subscriptions that come back with `meta.since` after a reconnect, token refresh
 * with `$ws:auth`, and reconnects with backoff.
 */

import { backoffDelay, type BackoffOptions } from "./backoff.js";
import { SwitchboardError, type ErrorPayload } from "./errors.js";

/** An envelope, as sent and received. */
export interface Frame {
  type: string;
  meta?: FrameMeta;
  payload?: unknown;
}

export interface FrameMeta {
  correlationId?: string;
  timestamp?: number;
  topic?: string;
  publisher?: string;
  offset?: number;
  epoch?: string;
  since?: { offset: number; epoch: string };
  [key: string]: unknown;
}

/** The `$ws:open` payload: who this connection is and its limits. */
export interface OpenInfo {
  connectionId: string;
  instance: string;
  app: string;
  protocol: string;
  user: { id: string; roles: string[]; anonymous: boolean };
  heartbeat: { intervalMs: number; timeoutMs: number };
  limits: { maxPayloadBytes: number; maxSubscriptions: number; outboundQueueMessages: number; idleTimeoutMs: number };
}

/**
 * `connecting`: the first connection is being opened. `open`: `$ws:open` arrived.
 * `reconnecting`: the connection was lost and another is coming. `closed`: for good
 * (`close()`, or a close that a reconnect cannot fix).
 */
export type State = "connecting" | "open" | "reconnecting" | "closed";

/** What a token comes from: a fixed string, or a callback asked for a fresh one. */
export type TokenSource = string | (() => string | Promise<string>);

export interface ClientOptions {
  /**
   * `ws://host:port/ws`; several are tried in turn, one per connection attempt (in
   * Kubernetes one Service URL is enough: it picks a replica).
   */
  url: string | string[];
  /** JWT, sent as the `bearer.<token>` subprotocol beside `switchboard.v1`. */
  token?: TokenSource;
  /** The WebSocket constructor; the global one by default. */
  WebSocket?: WebSocketConstructor;
  backoff?: BackoffOptions;
  /** How long a request waits for its answer by default. Default 10 s. */
  requestTimeoutMs?: number;
  /** Messages held while not open; beyond it `send` throws RESOURCE_EXHAUSTED. Default 1000. */
  maxQueuedMessages?: number;
  /** With a token callback: refresh this long before the token's `exp`. Default 30 s. */
  refreshBeforeExpiryMs?: number;
  /** Close codes after which no reconnect is tried (added to the defaults). */
  terminalCloseCodes?: number[];
}

export interface RequestOptions {
  timeoutMs?: number;
  signal?: AbortSignal;
  /** Retry a retryable refusal (after its `retryAfterMs`, else backoff), at most this many times. */
  retries?: number;
}

export interface SubscribeOptions {
  /**
   * Called when a resubscription could not recover what was missed (the ack said
   * `recovered: false`): reload the state from your own store.
   */
  onRecoveryFailed?: (reason: string | undefined, subscription: Subscription) => void;
  /** Called after every renewal's ack (after a reconnect), with `recovered` / `reason` set. */
  onResubscribed?: (subscription: Subscription) => void;
}

/** The bits of the WebSocket API the client uses (browsers and Node ≥ 20 have it). */
export interface WebSocketLike {
  readonly readyState: number;
  send(data: string): void;
  close(code?: number, reason?: string): void;
  onopen: ((ev: unknown) => void) | null;
  onmessage: ((ev: { data: unknown }) => void) | null;
  onclose: ((ev: { code: number; reason: string }) => void) | null;
  onerror: ((ev: unknown) => void) | null;
}
export type WebSocketConstructor = new (url: string, protocols?: string | string[]) => WebSocketLike;

type Listener<T> = (value: T) => void;

/** Closes that reconnecting cannot fix: a broken client, a too-big message, failed auth. */
const TERMINAL_CLOSES = [1002, 1007, 1008, 1009];
/** The server closed because the token expired without a refresh. */
const TOKEN_EXPIRED = 4401;
/** What the client closes with when its own heartbeat goes unanswered. */
const HEARTBEAT_LOST = 4000;
const OPEN = 1;

/** A subscription that outlives connections. */
export class Subscription {
  /** The topic, from the server's ack. */
  topic: string | undefined;
  /** The last delivery's position (history topics only). */
  offset: number | undefined;
  epoch: string | undefined;
  /** After a resubscription: whether every missed publication followed. */
  recovered: boolean | undefined;
  reason: string | undefined;
  active = true;

  constructor(
    private readonly client: Client,
    readonly type: string,
    readonly payload: unknown,
    readonly options: SubscribeOptions,
  ) {}

  /** Stops resubscribing; sends `type` (the app's unsubscribe route) with `payload` if given. */
  async unsubscribe(type?: string, payload?: unknown): Promise<void> {
    this.active = false;
    this.client.forget(this);
    if (type !== undefined) {
      await this.client.request(type, payload ?? this.payload);
    }
  }

  /** Moves the position forward from a delivery on its topic. */
  noteDelivery(meta: FrameMeta): void {
    if (typeof meta.offset === "number" && typeof meta.epoch === "string") {
      this.offset = meta.offset;
      this.epoch = meta.epoch;
    }
  }

  /** The subscribe frame: with `meta.since` once a position is known. */
  frame(correlationId: string): Frame {
    const meta: FrameMeta = { correlationId };
    if (this.offset !== undefined && this.epoch !== undefined) {
      meta.since = { offset: this.offset, epoch: this.epoch };
    }
    return { type: this.type, meta, payload: this.payload };
  }

  /** Takes the ack's position and recovery outcome. */
  acked(payload: Record<string, unknown>): void {
    if (typeof payload.topic === "string") this.topic = payload.topic;
    const recovering = this.offset !== undefined;
    if (typeof payload.recovered === "boolean") {
      this.recovered = payload.recovered;
      this.reason = typeof payload.reason === "string" ? payload.reason : undefined;
    }
    // A refused recovery restarts from the new position; so does a first subscribe.
    if (!recovering || payload.recovered === false) {
      if (typeof payload.offset === "number") this.offset = payload.offset;
      if (typeof payload.epoch === "string") this.epoch = payload.epoch;
    }
    if (payload.recovered === false) {
      this.options.onRecoveryFailed?.(this.reason, this);
    }
  }
}

interface Pending {
  resolve: (frame: Frame) => void;
  reject: (error: SwitchboardError) => void;
  /** Written to a socket (not only queued): a close may have lost its answer. */
  sent: boolean;
}

/** A message held while not open, with the request it belongs to. */
interface Queued {
  text: string;
  id: string | undefined;
}

export class Client {
  state: State = "connecting";
  /** The last `$ws:open` payload. */
  info: OpenInfo | undefined;
  private socket: WebSocketLike | undefined;
  private readonly options: ClientOptions;
  private readonly WebSocketImpl: WebSocketConstructor;
  private readonly queue: Queued[] = [];
  private readonly pending = new Map<string, Pending>();
  private readonly subscriptions = new Set<Subscription>();
  private readonly typeListeners = new Map<string, Set<Listener<Frame>>>();
  private readonly stateListeners = new Set<Listener<State>>();
  private readonly terminal: Set<number>;
  private nextId = 1;
  private attempt = 0;
  /** Connections opened so far: picks the next URL. */
  private connects = 0;
  /** Set by `$ws:drain`: the server's own wait before reconnecting. */
  private drainDelayMs: number | undefined;
  /** The token the current connection was opened or last refreshed with. */
  private currentToken: string | undefined;
  /** The server refused this connection's last `$ws:auth`: its 4401 is final. */
  private refreshRefused = false;
  private timers = new Set<ReturnType<typeof setTimeout>>();
  private heartbeat: ReturnType<typeof setInterval> | undefined;

  constructor(options: ClientOptions) {
    this.options = options;
    const impl = options.WebSocket ?? (globalThis as { WebSocket?: WebSocketConstructor }).WebSocket;
    if (impl === undefined) {
      throw new Error("no global WebSocket: pass options.WebSocket (Node 20 needs --experimental-websocket)");
    }
    this.WebSocketImpl = impl;
    this.terminal = new Set([...TERMINAL_CLOSES, ...(options.terminalCloseCodes ?? [])]);
    void this.connect();
  }

  /** Resolves once the connection is open (at once if it is). */
  ready(): Promise<OpenInfo> {
    if (this.state === "open" && this.info) return Promise.resolve(this.info);
    return new Promise((resolve, reject) => {
      const off = this.onState((s) => {
        if (s === "open" && this.info) {
          off();
          resolve(this.info);
        } else if (s === "closed") {
          off();
          reject(SwitchboardError.local("UNAVAILABLE", "the client is closed", false));
        }
      });
    });
  }

  /** Calls `listener` on every state change; returns the unsubscriber. */
  onState(listener: Listener<State>): () => void {
    this.stateListeners.add(listener);
    return () => this.stateListeners.delete(listener);
  }

  /** Calls `handler` for every frame of `type` (deliveries, `$ws:join`, ...). */
  on(type: string, handler: Listener<Frame>): () => void {
    let set = this.typeListeners.get(type);
    if (!set) {
      set = new Set();
      this.typeListeners.set(type, set);
    }
    set.add(handler);
    return () => set.delete(handler);
  }

  /** Sends a message without waiting for an answer; held while not open. */
  send(type: string, payload?: unknown, meta?: FrameMeta): void {
    this.write({ type, meta, payload });
  }

  /** Sends a message with a correlation id and resolves with its answer frame. */
  async request(type: string, payload?: unknown, options: RequestOptions = {}): Promise<Frame> {
    for (let attempt = 0; ; attempt++) {
      try {
        return await this.requestOnce(type, payload, options);
      } catch (e) {
        const retries = options.retries ?? 0;
        if (!(e instanceof SwitchboardError) || !e.retryable || attempt >= retries || options.signal?.aborted) {
          throw e;
        }
        await this.sleep(e.retryAfterMs ?? backoffDelay(attempt, this.options.backoff));
      }
    }
  }

  /**
   * Subscribes with the app's route `type` and keeps the subscription across
   * reconnects, recovering what was missed on topics with history.
   */
  async subscribe(type: string, payload?: unknown, options: SubscribeOptions = {}): Promise<Subscription> {
    const subscription = new Subscription(this, type, payload, options);
    const ack = await this.sendSubscription(subscription);
    subscription.acked(asRecord(ack.payload));
    this.subscriptions.add(subscription);
    return subscription;
  }

  /** Closes for good: pending requests fail with CANCELLED. */
  close(): void {
    this.setState("closed");
    this.stopTimers();
    this.failPending(SwitchboardError.local("CANCELLED", "the client was closed", false), false);
    this.socket?.close(1000, "closed by the client");
    this.socket = undefined;
  }

  /** @internal Drops a subscription from the resubscribe set. */
  forget(subscription: Subscription): void {
    this.subscriptions.delete(subscription);
  }

  private async connect(): Promise<void> {
    let protocols = ["switchboard.v1"];
    if (this.options.token !== undefined) {
      try {
        this.currentToken = await this.token();
        protocols = ["switchboard.v1", `bearer.${this.currentToken}`];
      } catch (e) {
        this.reconnectLater(`the token callback failed: ${String(e)}`);
        return;
      }
    }
    if (this.state === "closed") return;
    const urls = Array.isArray(this.options.url) ? this.options.url : [this.options.url];
    const url = urls[this.connects++ % urls.length] ?? "";
    const socket = new this.WebSocketImpl(url, protocols);
    this.socket = socket;
    socket.onmessage = (ev) => {
      if (this.socket === socket && typeof ev.data === "string") this.receive(ev.data);
    };
    socket.onclose = (ev) => {
      if (this.socket === socket) this.closed(ev.code, ev.reason);
    };
    socket.onerror = () => {
      // A refused upgrade: browsers follow with onclose, Node 20's WebSocket does not,
      // so a socket that never opened is given up here (a later onclose is ignored).
      if (this.socket === socket && socket.readyState !== OPEN) {
        this.closed(1006, "the connection failed");
      }
    };
  }

  private async token(): Promise<string> {
    const source = this.options.token;
    return typeof source === "function" ? await source() : (source ?? "");
  }

  private receive(text: string): void {
    let frame: Frame;
    try {
      frame = JSON.parse(text) as Frame;
    } catch {
      return;
    }
    const meta = frame.meta ?? {};
    if (frame.type === "$ws:open") {
      this.opened(frame.payload as OpenInfo);
      return;
    }
    if (frame.type === "$ws:drain") {
      const after = asRecord(frame.payload).reconnectAfterMs;
      this.drainDelayMs = typeof after === "number" ? after : 0;
    }
    if (typeof meta.topic === "string") {
      for (const s of this.subscriptions) {
        if (s.topic === meta.topic) s.noteDelivery(meta);
      }
    }
    const id = meta.correlationId;
    if (id !== undefined && this.pending.has(id)) {
      const pending = this.pending.get(id);
      this.pending.delete(id);
      if (frame.type === "ERROR" || frame.type === "RPC_ERROR") {
        pending?.reject(new SwitchboardError(frame.payload as ErrorPayload));
      } else {
        pending?.resolve(frame);
      }
      return;
    }
    for (const listener of this.typeListeners.get(frame.type) ?? []) listener(frame);
  }

  private opened(info: OpenInfo): void {
    const reconnect = this.attempt > 0 || this.info !== undefined;
    this.info = info;
    this.attempt = 0;
    this.refreshRefused = false;
    this.drainDelayMs = undefined;
    this.setState("open");
    this.startHeartbeat(info.heartbeat);
    this.scheduleRefresh();
    if (reconnect) {
      for (const s of this.subscriptions) {
        this.sendSubscription(s).then(
          (ack) => {
            s.acked(asRecord(ack.payload));
            s.options.onResubscribed?.(s);
          },
          () => {
            // Lost again before the ack: the next open resubscribes.
          },
        );
      }
    }
    for (const { text, id } of this.queue.splice(0)) {
      this.socket?.send(text);
      const pending = id === undefined ? undefined : this.pending.get(id);
      if (pending) pending.sent = true;
    }
  }

  private sendSubscription(s: Subscription): Promise<Frame> {
    const id = this.correlationId();
    return this.await(id, s.frame(id), {});
  }

  private closed(code: number, reason: string): void {
    this.socket = undefined;
    this.stopTimers();
    this.failPending(
      SwitchboardError.local("UNAVAILABLE", `the connection closed (${code}) before the answer came`, true),
      true,
    );
    if (this.state === "closed") return;
    const refreshable = typeof this.options.token === "function";
    if (this.terminal.has(code) || (code === TOKEN_EXPIRED && (!refreshable || this.refreshRefused))) {
      this.setState("closed");
      return;
    }
    this.reconnectLater(reason);
  }

  private reconnectLater(_why: string): void {
    if (this.state === "closed") return;
    this.setState(this.info === undefined ? "connecting" : "reconnecting");
    const delay = this.drainDelayMs ?? backoffDelay(this.attempt, this.options.backoff);
    this.drainDelayMs = undefined;
    this.attempt++;
    this.timer(delay, () => void this.connect());
  }

  /** Sends now when open, else holds it; `true` when it went to a socket. */
  private write(frame: Frame): boolean {
    const text = JSON.stringify(frame);
    if (this.state === "closed") {
      throw SwitchboardError.local("UNAVAILABLE", "the client is closed", false);
    }
    if (this.state === "open" && this.socket?.readyState === OPEN) {
      this.socket.send(text);
      return true;
    }
    if (this.queue.length >= (this.options.maxQueuedMessages ?? 1000)) {
      throw SwitchboardError.local("RESOURCE_EXHAUSTED", "too many messages held while reconnecting", true);
    }
    this.queue.push({ text, id: frame.meta?.correlationId });
    return false;
  }

  private requestOnce(type: string, payload: unknown, options: RequestOptions): Promise<Frame> {
    const id = this.correlationId();
    return this.await(id, { type, meta: { correlationId: id }, payload }, options);
  }

  private await(id: string, frame: Frame, options: RequestOptions): Promise<Frame> {
    return new Promise<Frame>((resolve, reject) => {
      if (options.signal?.aborted) {
        reject(SwitchboardError.local("CANCELLED", "aborted", false));
        return;
      }
      const timeoutMs = options.timeoutMs ?? this.options.requestTimeoutMs ?? 10_000;
      const done = () => {
        clearTimeout(timeout);
        options.signal?.removeEventListener("abort", abort);
      };
      const timeout = setTimeout(() => {
        this.pending.delete(id);
        done();
        reject(SwitchboardError.local("DEADLINE_EXCEEDED", `no answer to ${frame.type} within ${timeoutMs} ms`, true));
      }, timeoutMs);
      const abort = () => {
        this.pending.delete(id);
        done();
        reject(SwitchboardError.local("CANCELLED", "aborted", false));
      };
      options.signal?.addEventListener("abort", abort, { once: true });
      const pending: Pending = {
        resolve: (f) => {
          done();
          resolve(f);
        },
        reject: (e) => {
          done();
          reject(e);
        },
        sent: false,
      };
      this.pending.set(id, pending);
      try {
        pending.sent = this.write(frame);
      } catch (e) {
        this.pending.delete(id);
        done();
        reject(e as SwitchboardError);
      }
    });
  }

  /**
   * Sends `__heartbeat` every interval; an answer missing for the server's timeout
   * means the path is dead even if the socket has not noticed: close and reconnect.
   */
  private startHeartbeat(heartbeat: { intervalMs: number; timeoutMs: number }): void {
    if (!(heartbeat.intervalMs > 0)) return;
    this.heartbeat = setInterval(() => {
      const socket = this.socket;
      this.requestOnce("__heartbeat", {}, { timeoutMs: heartbeat.timeoutMs }).catch(() => {
        if (this.socket === socket) socket?.close(HEARTBEAT_LOST, "heartbeat lost");
      });
    }, heartbeat.intervalMs);
  }

  /** With a token callback: `$ws:auth` with a fresh token before this one expires. */
  private scheduleRefresh(): void {
    if (typeof this.options.token !== "function") return;
    const expiry = expiryOf(this.currentToken ?? "");
    if (expiry === undefined) return;
    const lead = this.options.refreshBeforeExpiryMs ?? 30_000;
    const socket = this.socket;
    this.timer(Math.max(0, expiry - lead - Date.now()), () => {
      if (this.socket !== socket || this.state !== "open") return;
      void this.token()
        .then(async (token) => {
          await this.requestOnce("$ws:auth", { token }, {});
          this.currentToken = token;
        })
        .then(
          () => this.scheduleRefresh(),
          (e: unknown) => {
            // The server refused the new token: its 4401 at expiry is final. (A
            // callback that failed, or a lost answer, leaves the reconnect to ask again.)
            if (e instanceof SwitchboardError && (e.code === "UNAUTHENTICATED" || e.code === "PERMISSION_DENIED")) {
              this.refreshRefused = true;
            }
          },
        );
    });
  }

  /** Fails the pending requests (only those already sent, with `onlySent`). */
  private failPending(error: SwitchboardError, onlySent: boolean): void {
    for (const [id, p] of [...this.pending]) {
      if (onlySent && !p.sent) continue;
      this.pending.delete(id);
      p.reject(error);
    }
  }

  private setState(state: State): void {
    if (this.state === state) return;
    this.state = state;
    for (const listener of this.stateListeners) listener(state);
  }

  private correlationId(): string {
    return `c${(this.nextId++).toString(36)}`;
  }

  private timer(ms: number, f: () => void): void {
    const t = setTimeout(() => {
      this.timers.delete(t);
      f();
    }, ms);
    this.timers.add(t);
  }

  private sleep(ms: number): Promise<void> {
    return new Promise((resolve) => setTimeout(resolve, ms));
  }

  private stopTimers(): void {
    for (const t of this.timers) clearTimeout(t);
    this.timers.clear();
    if (this.heartbeat !== undefined) clearInterval(this.heartbeat);
    this.heartbeat = undefined;
  }
}

function asRecord(value: unknown): Record<string, unknown> {
  return typeof value === "object" && value !== null ? (value as Record<string, unknown>) : {};
}

/** A JWT's `exp` in Unix milliseconds, if it has one. */
export function expiryOf(token: string): number | undefined {
  const part = token.split(".")[1];
  if (part === undefined) return undefined;
  try {
    const json = JSON.parse(atob(part.replace(/-/g, "+").replace(/_/g, "/"))) as { exp?: unknown };
    return typeof json.exp === "number" ? json.exp * 1000 : undefined;
  } catch {
    return undefined;
  }
}

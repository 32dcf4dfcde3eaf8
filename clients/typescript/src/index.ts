/**
 * @switchboard/client: a typed, reconnecting, recovering client for Switchboard apps.
 * See the package README for the connection's behaviour and its bounds.
 */
export { Client, Subscription, expiryOf } from "./client.js";
export type {
  ClientOptions,
  Frame,
  FrameMeta,
  OpenInfo,
  RequestOptions,
  State,
  SubscribeOptions,
  TokenSource,
  WebSocketConstructor,
  WebSocketLike,
} from "./client.js";
export { SwitchboardError } from "./errors.js";
export type { ErrorCode, ErrorPayload } from "./errors.js";
export { backoffDelay, DEFAULT_BACKOFF } from "./backoff.js";
export type { BackoffOptions } from "./backoff.js";
export { decodeTopicSegment, encodeTopicSegment, topicOf } from "./topic.js";

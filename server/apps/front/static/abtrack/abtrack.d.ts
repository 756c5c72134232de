/**
 * Types of abtrack (abtrack.js: global `ABTrack` or CommonJS; abtrack.mjs: ES module).
 * The same API in all three; docs/frontend.md describes it.
 */

/** The onboarding variants the API accepts. */
export type Variant = 'fast' | 'deep';

/** The event types the API accepts. */
export type EventType =
  | 'variant_assigned'
  | 'onboarding_started'
  | 'step_completed'
  | 'onboarding_completed'
  | 'onboarding_abandoned';

/** Kinds of report passed to `onError`. `http_<status>` for 400, 403, 413, 415 and any other refusal. */
export type ErrorKind =
  | 'retry'
  | 'rejected'
  | 'dropped'
  | 'too_large'
  | 'expired'
  | 'not_saved'
  | `http_${number}`;

/** One event as sent to the batch endpoint. */
export interface ABEvent {
  event_id: string;
  /** The browser's clock when `track` was called, ISO-8601. */
  client_ts: string;
  session_id: string;
  variant: Variant;
  event_type: EventType;
  step_number?: number;
  metadata?: Record<string, unknown>;
  /** 1 for the session's first event, then 2, 3, ... across page loads and tabs. */
  seq?: number;
}

/** One event the server refused inside a 200 answer. */
export interface RejectedEvent {
  index: number;
  errors: Record<string, string[]>;
}

export interface RetryDetail {
  /** The HTTP status (429, 5xx) or the network error. */
  reason: number | unknown;
  /** ms until the next try. */
  delay: number;
  events: number;
}

export interface ErrorCallback {
  (kind: 'retry', detail: RetryDetail): void;
  (kind: 'rejected', detail: RejectedEvent[]): void;
  (kind: 'dropped' | 'expired', detail: ABEvent[]): void;
  (kind: 'too_large', detail: ABEvent): void;
  /** localStorage is full: this many events (still queued) could not be saved for the next load. */
  (kind: 'not_saved', detail: number): void;
  (kind: ErrorKind, detail: unknown): void;
}

export interface Options {
  /** The batch endpoint; a full URL when the API is on another origin. Default `/api/rest/front/ab-events/`. */
  endpoint?: string;
  sessionId?: string | null;
  variant?: Variant | null;
  /** ms between batches. Default 2000. */
  flushInterval?: number;
  /** Events per request. Default 100. */
  maxBatchEvents?: number;
  /** Bytes per request body. Default 60000 (under the browser's 64 KiB keepalive budget). */
  maxBatchBytes?: number;
  /** Bytes of keepalive request bodies the browser lets a page have in flight. Default 65536. */
  keepaliveBudget?: number;
  /** Events kept while the API is unreachable; beyond, the oldest are dropped. Default 1000. */
  maxQueue?: number;
  /** ms, the longest wait between retries. Default 60000. */
  maxBackoff?: number;
  /** `'include'` sends the API's cookies (the user's Django session). Default `'omit'`. */
  credentials?: RequestCredentials;
  /** Extra headers, e.g. `() => ({'X-CSRFToken': token})`; unload then uses keepalive fetch, not sendBeacon. */
  headers?: (() => Record<string, string> | null | undefined) | null;
  /** localStorage key prefix (one key per tab) of events not yet accepted; null: none. Default `'abtrack:pending'`. */
  storageKey?: string | null;
  /** Saved events older than this are dropped on load. Default 7 days. */
  maxEventAgeMs?: number;
  /** localStorage key of the per-session `seq` counters; null: this page only. Default `'abtrack:seq'`. */
  seqStorageKey?: string | null;
  /** localStorage key of the opt-in/opt-out choice; null: this page only. Default `'abtrack:consent'`. */
  consentStorageKey?: string | null;
  /** Nothing is tracked until `optIn()`. Default false. */
  optOutByDefault?: boolean;
  onError?: ErrorCallback | ((kind: ErrorKind, detail: unknown) => void) | null;
}

export interface TrackFields {
  step_number?: number | null;
  metadata?: Record<string, unknown> | null;
  /** Overrides the tracker's session for this event. */
  session_id?: string;
  /** Overrides the tracker's variant for this event. */
  variant?: Variant;
  /** Your own id (UUID); by default one is made. */
  event_id?: string;
}

export declare class Tracker {
  constructor(options?: Options);
  /** The options in force (defaults filled in). */
  readonly opts: Required<Options>;
  /** No request before this time (ms since the epoch) after a 503, 429 or network error. */
  readonly retryAt: number;
  /** Queues an event; its `event_id`, or null when not tracked (opted out, stopped, too large). */
  track(eventType: EventType, fields?: TrackFields): string | null;
  /** Sends everything queued, batch after batch; resolves when the queue is empty or a failure made it wait. */
  flush(): Promise<void>;
  /** Events not yet accepted by the server (queued or in flight). */
  pending(): number;
  /** Events from now on belong to this session. */
  setSession(sessionId: string): void;
  /** Events from now on carry this variant. */
  setVariant(variant: Variant): void;
  /** Stops tracking, remembered across loads and tabs; queued and saved events are dropped. */
  optOut(): void;
  /** Tracks again (remembered across loads and tabs). */
  optIn(): void;
  isOptedOut(): boolean;
  /** Removes the timer and listeners and sends what is queued; resolves once answered (the rest stays saved). */
  stop(): Promise<void>;
}

export declare const VERSION: string;
export declare function init(options?: Options): Tracker;
export declare function uuid4(): string;

declare const ABTrack: {
  VERSION: string;
  init: typeof init;
  Tracker: typeof Tracker;
  uuid4: typeof uuid4;
};
export default ABTrack;

/** In a page that loads abtrack.js with a script tag: the global `ABTrack`. */
export as namespace ABTrack;

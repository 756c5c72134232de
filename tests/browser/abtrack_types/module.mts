// Type-checked by tests/browser/test_sdk_build.py against abtrack.d.mts (the ES module's types).
import ABTrack, { init, Tracker, uuid4, VERSION, type ABEvent, type Options } from './abtrack.mjs';

const options: Options = {
  endpoint: 'https://api.example.com/api/rest/front/ab-events/',
  sessionId: 's-1',
  variant: 'fast',
  credentials: 'include',
  headers: () => ({ 'X-CSRFToken': 'token' }),
  maxEventAgeMs: 24 * 3600 * 1000,
  onError: (kind, detail) => {
    if (kind === 'dropped') console.warn(detail);
  },
};
const ab: Tracker = init(options);
const id: string | null = ab.track('step_completed', { step_number: 2, metadata: { time_spent_ms: 1500 } });
ab.setSession('s-2');
ab.setVariant('deep');
const pending: number = ab.pending();
const optedOut: boolean = ab.isOptedOut();
ab.optOut();
ab.optIn();
const done: Promise<void> = ab.flush().then(() => ab.stop());
const sameInit: typeof init = ABTrack.init;
const saved: ABEvent[] = [];
console.log(id, pending, optedOut, done, sameInit, saved, uuid4(), VERSION);

// The types are not `any`: each line below must be an error.
// @ts-expect-error: not a variant the API accepts
ab.setVariant('slow');
// @ts-expect-error: not an event type the API accepts
ab.track('clicked');
// @ts-expect-error: no such option
init({ endpointUrl: '/x' });

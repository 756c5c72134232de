// Type-checked by tests/browser/test_sdk_build.py: a page script using the global of <script src="abtrack.js">.
const tracker = ABTrack.init({ sessionId: 's-1', variant: 'deep' });
tracker.track('variant_assigned');
// @ts-expect-error: pending() is a number
const count: string = tracker.pending();

// Type-checked by tests/browser/test_sdk_build.py against abtrack.d.ts (the script as a CommonJS module).
import ABTrack = require('./abtrack.js');

const tracker = ABTrack.init({ variant: 'fast', sessionId: 's-1' });
tracker.track('onboarding_started');
const sameInit = ABTrack.default.init;
export { sameInit, tracker };

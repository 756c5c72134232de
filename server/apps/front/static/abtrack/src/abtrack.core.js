/**
 * abtrack: sends A/B onboarding events to abflow. No dependencies.
 *
 * This file is the one source of the client. devtools/build_abtrack.py wraps it
 * into abtrack.js (a classic script: global `ABTrack`, also CommonJS) and
 * abtrack.mjs (an ES module); edit this file, then run
 * `python devtools/build_abtrack.py`. Types: abtrack.d.ts. Usage: docs/frontend.md.
 *
 * Delivery: events wait in memory and go out in batches (fetch, keepalive)
 * every `flushInterval` ms. Each event carries an `event_id` made here, so a
 * retry after a 503, a 429 or a network error resends the same ids and the
 * server stores each event once. An event is forgotten only once the server
 * accepted its request (or the browser took its beacon). When the page is
 * hidden or left (visibilitychange/pagehide) whatever is queued goes out with
 * navigator.sendBeacon (text/plain: no CORS preflight), or with keepalive
 * fetches within the browser's 64 KiB budget when headers are needed; every
 * event not yet accepted is kept in localStorage and sent again by the next
 * page load (same ids: stored once).
 */
function createABTrack(root) {
  'use strict';

  var VERSION = '2.0.0';

  var DEFAULTS = {
    endpoint: '/api/rest/front/ab-events/', // a full URL when the API is on another origin
    sessionId: null,
    variant: null,
    flushInterval: 2000, // ms between batches
    maxBatchEvents: 100,
    // Keepalive fetches and beacons of one page share a 64 KiB budget in
    // browsers; a larger body is refused. Keep one batch well under it.
    maxBatchBytes: 60000,
    keepaliveBudget: 65536, // bytes of keepalive request bodies the browser lets a page have in flight
    maxQueue: 1000, // beyond this the oldest events are dropped (and reported)
    maxBackoff: 60000, // ms, cap of the retry delay
    credentials: 'omit', // 'include' sends the API's cookies (the user's session)
    headers: null, // function () -> {name: value}, e.g. {'X-CSRFToken': token}; see docs
    storageKey: 'abtrack:pending', // localStorage key prefix for events not yet accepted; null: none
    // Saved events older than this are dropped on load: the server pins an
    // event_time older than 7 days (AB_CLIENT_TS_MAX_AGE) to that bound anyway.
    maxEventAgeMs: 7 * 24 * 3600 * 1000,
    seqStorageKey: 'abtrack:seq', // per-session event counters, shared by the tabs; null: this page only
    consentStorageKey: 'abtrack:consent', // 'in' / 'out', shared by the tabs; null: this page only
    optOutByDefault: false, // true: nothing is tracked until optIn()
    onError: null // function (kind, detail): see docs/frontend.md
  };

  // A saved session counter is forgotten after maxEventAgeMs without events; at most this many are kept.
  var MAX_SEQ_SESSIONS = 50;

  function extend(target, source) {
    for (var key in source) {
      if (Object.prototype.hasOwnProperty.call(source, key) && source[key] !== undefined) target[key] = source[key];
    }
    return target;
  }

  function isArray(value) {
    return Object.prototype.toString.call(value) === '[object Array]';
  }

  function uuid4() {
    var c = root.crypto;
    if (c && typeof c.randomUUID === 'function') return c.randomUUID();
    // randomUUID needs a secure context (https, localhost); getRandomValues does not.
    var b = new Uint8Array(16);
    c.getRandomValues(b);
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    var h = [];
    for (var i = 0; i < 16; i++) h.push((b[i] + 0x100).toString(16).slice(1));
    return h.slice(0, 4).join('') + '-' + h.slice(4, 6).join('') + '-' + h.slice(6, 8).join('') + '-' +
      h.slice(8, 10).join('') + '-' + h.slice(10).join('');
  }

  var encoder = typeof TextEncoder === 'function' ? new TextEncoder() : null;
  function byteLength(text) {
    return encoder ? encoder.encode(text).length : unescape(encodeURIComponent(text)).length;
  }

  // {"events":[],"sent_at":"2024-01-01T00:00:00.000Z"}: all but the events.
  var ENVELOPE_BYTES = 50;

  function eventBytes(event) {
    return byteLength(JSON.stringify(event)) + 1; // + the comma between events
  }

  function batchBody(events) {
    // sent_at on the same (possibly wrong) clock as client_ts: the server
    // corrects event times by (its receive time - sent_at).
    return JSON.stringify({ events: events, sent_at: new Date().toISOString() });
  }

  // localStorage may be missing, disabled (a SecurityError on access) or full:
  // every use goes through these, and a failure only costs persistence.
  function storage() {
    try {
      return root.localStorage || null;
    } catch (e) {
      return null;
    }
  }

  function readItem(key) {
    var s = key ? storage() : null;
    if (!s) return null;
    try {
      return s.getItem(key);
    } catch (e) {
      return null;
    }
  }

  function writeItem(key, value) {
    var s = key ? storage() : null;
    if (!s) return false;
    try {
      s.setItem(key, value);
      return true;
    } catch (e) {
      return false;
    }
  }

  function removeItem(key) {
    var s = key ? storage() : null;
    if (!s) return;
    try {
      s.removeItem(key);
    } catch (e) { /* nothing to do */ }
  }

  function keysWithPrefix(prefix) {
    var s = prefix ? storage() : null;
    var keys = [];
    if (!s) return keys;
    try {
      for (var i = 0; i < s.length; i++) {
        var name = s.key(i);
        if (name && name.indexOf(prefix) === 0) keys.push(name);
      }
    } catch (e) { /* unreadable: none */ }
    return keys;
  }

  function Tracker(options) {
    this.opts = extend(extend({}, DEFAULTS), options || {});
    this.queue = []; // events not yet handed to the network, oldest first
    this.requests = []; // fetches in flight: {events, keepaliveBytes, done}; their events are not yet accepted
    this.keepaliveBytes = 0; // bodies of this page's keepalive fetches in flight (the browser's budget)
    this.draining = null; // the running flush(), if any
    this.failures = 0; // consecutive failed sends, for the backoff
    this.retryAt = 0; // no fetch before this time (ms since epoch)
    this.persisting = false; // localStorage follows every change until all is accepted
    this.stopped = false;
    this.consent = null; // 'in' / 'out' when set on this page (storage may be unavailable)
    this.seqs = {}; // session -> last seq given on this page (storage may be unavailable)
    this.tabId = uuid4().slice(0, 8); // each tab saves under its own key: tabs never overwrite each other
    var self = this;
    this._onPageHide = function () { self._handOver(); };
    this._onVisibilityChange = function () {
      if (root.document.visibilityState === 'hidden') self._handOver();
    };
    this._restore();
    this._listen();
    this.timer = setInterval(function () { self.flush(); }, this.opts.flushInterval);
    if (this.queue.length) this.flush();
  }

  Tracker.prototype._report = function (kind, detail) {
    if (typeof this.opts.onError === 'function') {
      try { this.opts.onError(kind, detail); } catch (e) { /* the page's handler must not break delivery */ }
    }
  };

  /** Queue one event; returns its event_id (null when not tracked: opted out, stopped, too large). */
  Tracker.prototype.track = function (eventType, fields) {
    if (this.stopped || this.isOptedOut()) return null;
    fields = fields || {};
    var sessionId = fields.session_id || this.opts.sessionId;
    var event = {
      event_id: fields.event_id || uuid4(),
      client_ts: new Date().toISOString(),
      session_id: sessionId,
      variant: fields.variant || this.opts.variant,
      event_type: eventType
    };
    if (fields.step_number !== undefined && fields.step_number !== null) event.step_number = fields.step_number;
    if (fields.metadata) event.metadata = fields.metadata;
    // Numbered before the size check: a refused event is a lost one, and its
    // gap in the sequence says so.
    if (sessionId) event.seq = this._nextSeq(sessionId);
    if (eventBytes(event) + ENVELOPE_BYTES > this.opts.maxBatchBytes) {
      this._report('too_large', event);
      return null;
    }
    this.queue.push(event);
    if (this.queue.length > this.opts.maxQueue) {
      this._report('dropped', this.queue.splice(0, this.queue.length - this.opts.maxQueue));
    }
    if (this.persisting) this._save(); // a hidden page may be killed without another event
    if (this.queue.length >= this.opts.maxBatchEvents) this.flush();
    return event.event_id;
  };

  // The session's next number: 1 for its first event, then 2, 3, ... across
  // page loads and tabs (the counter lives in localStorage), so the server can
  // count the events that never arrived.
  Tracker.prototype._nextSeq = function (sessionId) {
    var key = this.opts.seqStorageKey;
    var now = Date.now();
    var table = null;
    try {
      table = JSON.parse(readItem(key) || '{}');
    } catch (e) { /* unreadable: start over */ }
    if (!table || typeof table !== 'object' || isArray(table)) table = {};
    var entry = table[sessionId];
    var stored = isArray(entry) && typeof entry[0] === 'number' ? entry[0] : 0;
    var seq = Math.max(stored, this.seqs[sessionId] || 0) + 1;
    this.seqs[sessionId] = seq;
    table[sessionId] = [seq, now];
    if (key) writeItem(key, JSON.stringify(this._pruneSeqs(table, now)));
    return seq;
  };

  // Sessions idle longer than maxEventAgeMs are over; keep the most recent few.
  Tracker.prototype._pruneSeqs = function (table, now) {
    var live = [];
    for (var name in table) {
      if (!Object.prototype.hasOwnProperty.call(table, name)) continue;
      var entry = table[name];
      if (isArray(entry) && typeof entry[1] === 'number' && now - entry[1] <= this.opts.maxEventAgeMs) {
        live.push([name, entry]);
      }
    }
    live.sort(function (a, b) { return b[1][1] - a[1][1]; });
    var kept = {};
    for (var i = 0; i < live.length && i < MAX_SEQ_SESSIONS; i++) kept[live[i][0]] = live[i][1];
    return kept;
  };

  /** Events not yet accepted by the server: queued or in flight. */
  Tracker.prototype.pending = function () {
    return this.queue.length + this._unanswered().length;
  };

  Tracker.prototype._unanswered = function () {
    var events = [];
    for (var i = 0; i < this.requests.length; i++) events = events.concat(this.requests[i].events);
    return events;
  };

  /** Events from now on belong to this session (its own seq numbers). */
  Tracker.prototype.setSession = function (sessionId) {
    this.opts.sessionId = sessionId;
  };

  /** Events from now on carry this variant. */
  Tracker.prototype.setVariant = function (variant) {
    this.opts.variant = variant;
  };

  /** True while the user has opted out (on this page, or in any tab of this origin). */
  Tracker.prototype.isOptedOut = function () {
    var choice = readItem(this.opts.consentStorageKey);
    if (choice !== 'in' && choice !== 'out') choice = this.consent;
    if (choice === null) choice = this.opts.optOutByDefault ? 'out' : 'in';
    return choice === 'out';
  };

  /**
   * Stop tracking, remembered across page loads: nothing more is sent or
   * stored, and the queued and saved events (of every tab) are dropped.
   */
  Tracker.prototype.optOut = function () {
    this.consent = 'out';
    writeItem(this.opts.consentStorageKey, 'out');
    this.queue = [];
    this.persisting = false;
    // Requests already in flight cannot be recalled; their answers change nothing now.
    var keys = keysWithPrefix(this.opts.storageKey ? this.opts.storageKey + ':' : null);
    for (var i = 0; i < keys.length; i++) removeItem(keys[i]);
    removeItem(this.opts.seqStorageKey);
    this.seqs = {};
  };

  /** Track again (remembered across page loads). */
  Tracker.prototype.optIn = function () {
    this.consent = 'in';
    writeItem(this.opts.consentStorageKey, 'in');
  };

  // Takes events from the head of the queue while the body stays within maxBytes
  // (none when the first event alone does not fit).
  Tracker.prototype._take = function (maxBytes) {
    var events = [];
    var size = ENVELOPE_BYTES;
    while (this.queue.length && events.length < this.opts.maxBatchEvents) {
      var n = eventBytes(this.queue[0]);
      if (size + n > maxBytes) break;
      events.push(this.queue.shift());
      size += n;
    }
    return events;
  };

  /**
   * Send everything queued now, batch after batch (unless a retry is due
   * later). Resolves when the queue is empty or a failure made it wait.
   */
  Tracker.prototype.flush = function () {
    if (this.draining) return this.draining;
    var self = this;
    var next = function () {
      if (self.isOptedOut()) self.queue = []; // opted out in another tab
      if (!self.queue.length || Date.now() < self.retryAt) {
        self.draining = null;
        return undefined;
      }
      var batch = self._take(self.opts.maxBatchBytes);
      if (!batch.length) { // maxBatchBytes was lowered after the event was queued
        self._report('too_large', self.queue.shift());
        return next();
      }
      return self._send(batch).then(next);
    };
    var running = next();
    if (!running) return Promise.resolve();
    this.draining = running.then(null, function () { self.draining = null; });
    return this.draining;
  };

  Tracker.prototype._headers = function (contentType) {
    var headers = { 'Content-Type': contentType };
    if (typeof this.opts.headers === 'function') extend(headers, this.opts.headers() || {});
    return headers;
  };

  // One fetch of `events`. keepalive (the request outlives the page) while the
  // page's keepalive bodies stay within the browser's budget: over it, Chromium
  // does not throw but rejects the promise later. The events count as pending
  // until the answer: only an accepted status lets them go.
  Tracker.prototype._send = function (events) {
    var self = this;
    var body = batchBody(events);
    var bytes = byteLength(body);
    var keepalive = this.keepaliveBytes + bytes <= this.opts.keepaliveBudget;
    var request = { events: events, keepaliveBytes: keepalive ? bytes : 0, done: null };
    this.requests.push(request);
    this.keepaliveBytes += request.keepaliveBytes;
    var sent;
    try {
      sent = fetch(this.opts.endpoint, {
        method: 'POST',
        keepalive: keepalive,
        credentials: this.opts.credentials,
        headers: this._headers('application/json'),
        body: body
      });
    } catch (e) {
      sent = Promise.reject(e);
    }
    request.done = sent.then(function (response) {
      return self._settle(events, response);
    }, function (error) {
      self._retry(events, null, error); // network error (or a budget this code did not foresee)
    }).then(function () {
      var at = self.requests.indexOf(request);
      if (at >= 0) self.requests.splice(at, 1);
      self.keepaliveBytes -= request.keepaliveBytes;
      if (self.persisting) self._save();
    });
    return request.done;
  };

  Tracker.prototype._settle = function (events, response) {
    var status = response.status;
    if (response.ok) {
      this.failures = 0;
      var self = this;
      return response.json().then(function (data) {
        if (data && data.rejected && data.rejected.length) self._report('rejected', data.rejected);
      }, function () { /* accepted all the same */ });
    }
    if (status === 503 || status === 429 || status >= 500) {
      var header = response.headers.get('Retry-After');
      var seconds = header !== null && /^\d+$/.test(header) ? parseInt(header, 10) : null;
      this._retry(events, seconds, status);
      return undefined;
    }
    // 400, 403 (CSRF), 413, 415: sending the same body again cannot succeed.
    this._report('http_' + status, events);
    return undefined;
  };

  // Back to the head of the queue, same event_ids, after Retry-After or an exponential backoff.
  Tracker.prototype._retry = function (events, retryAfterSeconds, reason) {
    if (this.isOptedOut()) return; // opted out meanwhile: drop them
    this.queue = events.concat(this.queue);
    this.failures += 1;
    var delay;
    if (retryAfterSeconds !== null && retryAfterSeconds !== undefined) {
      delay = retryAfterSeconds * 1000;
    } else {
      var base = Math.min(this.opts.maxBackoff, 1000 * Math.pow(2, this.failures - 1));
      delay = base / 2 + Math.random() * base / 2; // jitter: clients that failed together do not retry together
    }
    this.retryAt = Date.now() + Math.min(delay, this.opts.maxBackoff);
    this._report('retry', { reason: reason, delay: delay, events: events.length });
  };

  // The page is being hidden or left: hand what is queued to the browser now,
  // within its keepalive budget, and keep in localStorage every event not yet
  // accepted (queued, refused, or in a request still unanswered): if the page
  // dies, the next load sends them again (same ids: stored once).
  Tracker.prototype._handOver = function () {
    if (this.isOptedOut()) return;
    var backingOff = Date.now() < this.retryAt; // the server just said 503/429: keep them for later
    var useBeacon = typeof this.opts.headers !== 'function' && root.navigator &&
      typeof root.navigator.sendBeacon === 'function';
    while (this.queue.length && !backingOff) {
      if (useBeacon) {
        var events = this._take(this.opts.maxBatchBytes);
        if (!events.length) break;
        // A string body is sent as text/plain: a "simple" request, no preflight.
        // true: the browser took it and delivers it after the page is gone;
        // false: over the browser's keepalive budget, keep the events.
        if (!root.navigator.sendBeacon(this.opts.endpoint, batchBody(events))) {
          this.queue = events.concat(this.queue);
          break;
        }
      } else {
        // A beacon cannot carry headers (CSRF token): keepalive fetches, each
        // within what is left of the budget. Their events stay pending (and
        // saved) until answered; the rest waits in the queue.
        var room = Math.min(this.opts.maxBatchBytes, this.opts.keepaliveBudget - this.keepaliveBytes);
        var batch = this._take(room);
        if (!batch.length) break;
        this._send(batch);
      }
    }
    this.persisting = true;
    this._save();
  };

  // localStorage keeps every event not yet accepted; the next page load sends
  // them again (same event_ids, so an event that did get through is still
  // stored once). Storage full: as many of the newest as fit are kept, and
  // onError('not_saved', n) tells how many were not (they are still queued).
  Tracker.prototype._save = function () {
    if (!this.opts.storageKey || !storage()) return;
    var key = this.opts.storageKey + ':' + this.tabId;
    var pending = this.isOptedOut() ? [] : this._unanswered().concat(this.queue);
    if (!pending.length) {
      removeItem(key);
      this.persisting = false; // everything accepted: nothing left to keep
      return;
    }
    var saved = pending;
    while (saved.length && !writeItem(key, JSON.stringify(saved))) saved = saved.slice(Math.ceil(saved.length / 2));
    if (!saved.length) removeItem(key);
    if (saved.length < pending.length) this._report('not_saved', pending.length - saved.length);
  };

  // Takes over what any tab of this origin left (a tab still open that saved
  // at a tab switch may send the same events too: same ids, stored once).
  // Events older than maxEventAgeMs are dropped.
  Tracker.prototype._restore = function () {
    var keys = keysWithPrefix(this.opts.storageKey ? this.opts.storageKey + ':' : null);
    if (!keys.length) return;
    var optedOut = this.isOptedOut();
    var oldest = Date.now() - this.opts.maxEventAgeMs;
    var seen = {};
    var expired = [];
    for (var k = 0; k < keys.length; k++) {
      var saved = null;
      try {
        saved = JSON.parse(readItem(keys[k]) || '[]');
      } catch (e) { /* unreadable: dropped */ }
      removeItem(keys[k]);
      if (optedOut || !isArray(saved)) continue;
      for (var i = 0; i < saved.length; i++) {
        var event = saved[i];
        if (!event || typeof event !== 'object' || seen[event.event_id]) continue;
        seen[event.event_id] = true;
        var at = Date.parse(event.client_ts);
        if (at < oldest) expired.push(event);
        else this.queue.push(event);
      }
    }
    if (expired.length) this._report('expired', expired);
    if (this.queue.length > this.opts.maxQueue) {
      this._report('dropped', this.queue.splice(0, this.queue.length - this.opts.maxQueue));
    }
    if (this.queue.length) {
      // Saved under this tab's key until accepted: this page may die before it sends them.
      this.persisting = true;
      this._save();
    }
  };

  Tracker.prototype._listen = function () {
    if (typeof root.addEventListener !== 'function') return;
    // pagehide fires on navigation and close (also into the back/forward
    // cache, where unload never does); visibilitychange to hidden is the last
    // event mobile browsers reliably fire before killing a background tab.
    root.addEventListener('pagehide', this._onPageHide);
    if (root.document) root.document.addEventListener('visibilitychange', this._onVisibilityChange);
  };

  /**
   * Stop for good (single-page app teardown): removes the timer and every
   * listener, then sends what is queued. Resolves when the server has
   * answered; what it did not accept stays saved for the next page load.
   */
  Tracker.prototype.stop = function () {
    if (!this.stopped) {
      this.stopped = true;
      clearInterval(this.timer);
      if (typeof root.removeEventListener === 'function') root.removeEventListener('pagehide', this._onPageHide);
      if (root.document) root.document.removeEventListener('visibilitychange', this._onVisibilityChange);
      if (this.pending()) {
        // Saved first: the page may go before the answers come.
        this.persisting = true;
        this._save();
      }
    }
    var self = this;
    return this.flush().then(function () {
      var waiting = [];
      for (var i = 0; i < self.requests.length; i++) waiting.push(self.requests[i].done);
      return Promise.all(waiting);
    }).then(function () { return undefined; });
  };

  var ABTrack = {
    VERSION: VERSION,
    init: function (options) { return new Tracker(options); },
    Tracker: Tracker,
    uuid4: uuid4
  };
  // `import ABTrack from` a CommonJS require() or the global gets the same object.
  ABTrack['default'] = ABTrack;
  return ABTrack;
}

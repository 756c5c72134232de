/*!
 * abtrack.js: sends A/B onboarding events to abflow. No dependencies.
 * Usage and the raw HTTP calls it makes: docs/frontend.md.
 *
 *   var ab = ABTrack.init({endpoint: 'https://api.example.com/api/rest/front/ab-events/',
 *                          sessionId: 's-123', variant: 'fast'});
 *   ab.track('step_completed', {step_number: 2, metadata: {time_spent_ms: 1500}});
 *
 * Delivery: events wait in memory and go out in batches (fetch, keepalive)
 * every `flushInterval` ms. Each event carries an `event_id` made here, so a
 * retry after a 503, a 429 or a network error resends the same ids and the
 * server stores each event once. An event is forgotten only once the server
 * answered its request (or the browser took its beacon). When the page is
 * hidden or left (visibilitychange/pagehide) whatever is still queued goes
 * out with navigator.sendBeacon (text/plain: no CORS preflight), or keepalive
 * fetches within the browser's 64 KiB budget when headers are needed; every
 * event not yet answered is kept in localStorage and sent again by the next
 * page load (same ids: stored once).
 */
(function (root) {
  'use strict';

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
    storageKey: 'abtrack:pending', // localStorage key for events left at unload; null: none
    onError: null // function (kind, detail): 'rejected', 'dropped', 'too_large', 'http_<status>'
  };

  function extend(target, source) {
    for (var key in source) {
      if (Object.prototype.hasOwnProperty.call(source, key) && source[key] !== undefined) target[key] = source[key];
    }
    return target;
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

  function Tracker(options) {
    this.opts = extend(extend({}, DEFAULTS), options || {});
    this.queue = []; // events not yet handed to the network, oldest first
    this.requests = []; // fetches in flight: {events, keepaliveBytes}; their events are not yet accepted
    this.keepaliveBytes = 0; // bodies of this page's keepalive fetches in flight (the browser's budget)
    this.draining = null; // the running flush(), if any
    this.failures = 0; // consecutive failed sends, for the backoff
    this.retryAt = 0; // no fetch before this time (ms since epoch)
    this.persisting = false; // the page was hidden: localStorage follows every change until all is accepted
    this.tabId = uuid4().slice(0, 8); // each tab saves under its own key: tabs never overwrite each other
    this._restore();
    this._listen();
    var self = this;
    this.timer = setInterval(function () { self.flush(); }, this.opts.flushInterval);
    if (this.queue.length) this.flush();
  }

  Tracker.prototype._report = function (kind, detail) {
    if (typeof this.opts.onError === 'function') {
      try { this.opts.onError(kind, detail); } catch (e) { /* the page's handler must not break delivery */ }
    }
  };

  /** Queue one event; returns its event_id (null when refused). */
  Tracker.prototype.track = function (eventType, fields) {
    fields = fields || {};
    var event = {
      event_id: fields.event_id || uuid4(),
      client_ts: new Date().toISOString(),
      session_id: fields.session_id || this.opts.sessionId,
      variant: fields.variant || this.opts.variant,
      event_type: eventType
    };
    if (fields.step_number !== undefined && fields.step_number !== null) event.step_number = fields.step_number;
    if (fields.metadata) event.metadata = fields.metadata;
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

  /** Events not yet accepted by the server: queued or in flight. */
  Tracker.prototype.pending = function () {
    return this.queue.length + this._unanswered().length;
  };

  Tracker.prototype._unanswered = function () {
    var events = [];
    for (var i = 0; i < this.requests.length; i++) events = events.concat(this.requests[i].events);
    return events;
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

  function batchBody(events) {
    // sent_at on the same (possibly wrong) clock as client_ts: the server
    // corrects event times by (its receive time - sent_at).
    return JSON.stringify({ events: events, sent_at: new Date().toISOString() });
  }

  Tracker.prototype._headers = function (contentType) {
    var headers = { 'Content-Type': contentType };
    if (typeof this.opts.headers === 'function') extend(headers, this.opts.headers() || {});
    return headers;
  };

  /**
   * Send everything queued now, batch after batch (unless a retry is due
   * later). Resolves when the queue is empty or a failure made it wait.
   */
  Tracker.prototype.flush = function () {
    if (this.draining) return this.draining;
    var self = this;
    var next = function () {
      if (!self.queue.length || Date.now() < self.retryAt) {
        self.draining = null;
        return undefined;
      }
      return self._send(self._take(self.opts.maxBatchBytes)).then(next);
    };
    var running = next();
    if (!running) return Promise.resolve();
    this.draining = running.then(null, function () { self.draining = null; });
    return this.draining;
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
    var request = { events: events, keepaliveBytes: keepalive ? bytes : 0 };
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
    return sent.then(function (response) {
      return self._settle(events, response);
    }, function (error) {
      self._retry(events, null, error); // network error (or a budget this code did not foresee)
    }).then(function () {
      var at = self.requests.indexOf(request);
      if (at >= 0) self.requests.splice(at, 1);
      self.keepaliveBytes -= request.keepaliveBytes;
      if (self.persisting) self._save();
    });
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

  // The page is being hidden or left: hand everything queued to the browser
  // now, within its keepalive budget, and keep in localStorage every event not
  // yet accepted (queued, refused, or in a request still unanswered): if the
  // page dies, the next load sends them again (same ids: stored once).
  Tracker.prototype._flushOnHide = function () {
    var backingOff = Date.now() < this.retryAt; // the server just said 503/429: keep them for later
    var useBeacon = typeof this.opts.headers !== 'function' && root.navigator && typeof navigator.sendBeacon === 'function';
    while (this.queue.length && !backingOff) {
      if (useBeacon) {
        var events = this._take(this.opts.maxBatchBytes);
        // A string body is sent as text/plain: a "simple" request, no preflight.
        // true: the browser took it and will deliver it after the page is gone;
        // false: over the browser's keepalive budget, keep the events.
        if (!navigator.sendBeacon(this.opts.endpoint, batchBody(events))) {
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

  // localStorage keeps what is queued or in flight at unload: the next page
  // load sends it again (same event_ids, so an event that did get through
  // is still stored once).
  Tracker.prototype._save = function () {
    if (!this.opts.storageKey) return;
    var key = this.opts.storageKey + ':' + this.tabId;
    var pending = this._unanswered().concat(this.queue);
    try {
      if (pending.length) {
        localStorage.setItem(key, JSON.stringify(pending));
      } else {
        localStorage.removeItem(key);
        this.persisting = false; // everything accepted: nothing left to keep
      }
    } catch (e) { /* storage full or disabled: nothing more to do */ }
  };

  // Takes over what any tab of this origin left (a tab still open that saved
  // at a tab switch may send the same events too: same ids, stored once).
  Tracker.prototype._restore = function () {
    var prefix = this.opts.storageKey ? this.opts.storageKey + ':' : null;
    if (!prefix) return;
    try {
      var keys = [];
      for (var i = 0; i < localStorage.length; i++) {
        var name = localStorage.key(i);
        if (name && name.indexOf(prefix) === 0) keys.push(name);
      }
      for (var k = 0; k < keys.length; k++) {
        var saved = JSON.parse(localStorage.getItem(keys[k]) || '[]');
        localStorage.removeItem(keys[k]);
        if (Object.prototype.toString.call(saved) === '[object Array]') this.queue = this.queue.concat(saved);
      }
      if (this.queue.length > this.opts.maxQueue) this.queue = this.queue.slice(-this.opts.maxQueue);
    } catch (e) { /* storage disabled or unreadable: start empty */ }
  };

  Tracker.prototype._listen = function () {
    var self = this;
    if (typeof root.addEventListener !== 'function') return;
    // pagehide fires on navigation and close (also into the back/forward
    // cache, where unload never does); visibilitychange to hidden is the last
    // event mobile browsers reliably fire before killing a background tab.
    root.addEventListener('pagehide', function () { self._flushOnHide(); });
    root.document.addEventListener('visibilitychange', function () {
      if (root.document.visibilityState === 'hidden') self._flushOnHide();
    });
  };

  /** Stop the timer and listeners' effect (tests, single-page app teardown). */
  Tracker.prototype.stop = function () {
    clearInterval(this.timer);
    this._flushOnHide = function () {};
  };

  var ABTrack = {
    init: function (options) { return new Tracker(options); },
    Tracker: Tracker,
    uuid4: uuid4
  };
  if (typeof module === 'object' && module.exports) module.exports = ABTrack;
  root.ABTrack = ABTrack;
})(typeof window !== 'undefined' ? window : this);

/*
 * Stands in for https://connect.facebook.net/en_US/fbevents.js in the browser tests.
 *
 * Meta's base code defines window.fbq as a stub that queues its calls in fbq.queue (or calls
 * fbq.callMethod once the library has set it), then loads fbevents.js asynchronously. Like
 * the real library, this script takes over that stub: it replays the queued calls and sets
 * fbq.callMethod, so that every call, made before or after it loaded, is recorded in order in
 * window.__capiFbqCalls as a JSON value: ["track", "Purchase", {...}, {"eventID": "..."}].
 *
 * It also routes each event as the real library does, into window.__capiFbqHits as
 * [pixel id, event name, eventID]: fbq('track') and fbq('trackCustom') reach every pixel
 * initialised so far, fbq('trackSingle', pixel, ...) and fbq('trackSingleCustom', pixel, ...)
 * only that pixel, and nothing when it was never initialised.
 *
 * Like the real library on fbq('init'), it sets the first-party _fbp cookie when missing:
 * fb.<subdomain index>.<creation time in ms>.<random number>. It never sets _fbc: the tests
 * prove the server (CapiMiddleware) does.
 */
(function () {
  "use strict";
  var fbq = window.fbq;
  var calls = (window.__capiFbqCalls = window.__capiFbqCalls || []);
  var hits = (window.__capiFbqHits = window.__capiFbqHits || []);
  var pixels = [];
  if (!fbq) {
    window.__capiFbqError = "fbevents.js loaded without the base code's fbq stub";
    return;
  }

  function ensureFbp() {
    if (/(?:^|;\s*)_fbp=/.test(document.cookie)) {
      return;
    }
    var random = String(1000000000 + Math.floor(Math.random() * 9000000000));
    document.cookie =
      "_fbp=fb.1." + Date.now() + "." + random + "; path=/; max-age=7776000; SameSite=Lax";
  }

  function record(args) {
    var call = JSON.parse(JSON.stringify(Array.prototype.slice.call(args)));
    calls.push(call);
    if (call[0] === "init") {
      ensureFbp();
      if (pixels.indexOf(call[1]) < 0) {
        pixels.push(call[1]);
      }
    } else if (call[0] === "track" || call[0] === "trackCustom") {
      for (var p = 0; p < pixels.length; p++) {
        hits.push([pixels[p], call[1], (call[3] || {}).eventID || null]);
      }
    } else if (call[0] === "trackSingle" || call[0] === "trackSingleCustom") {
      if (pixels.indexOf(call[1]) >= 0) {
        hits.push([call[1], call[2], (call[4] || {}).eventID || null]);
      }
    }
  }

  var queued = fbq.queue || [];
  fbq.queue = [];
  fbq.callMethod = function () {
    record(arguments);
  };
  fbq.loaded = true;
  for (var i = 0; i < queued.length; i++) {
    record(queued[i]);
  }
  window.__capiFbqReady = true;
})();

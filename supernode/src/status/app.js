// Damselfly status page: keeps the view live. Every 2 s (while the tab is visible) it reads the
// same page again with the session cookie and swaps in the new #live element. No framework, no
// build step; without it the page is a plain snapshot.
(function () {
  "use strict";
  var state = document.getElementById("live-state");
  var busy = false;

  function say(text, cls) {
    if (state) {
      state.textContent = text;
      state.className = cls;
    }
  }

  function refresh() {
    if (busy || document.hidden) {
      return;
    }
    busy = true;
    fetch(location.pathname, { credentials: "same-origin", cache: "no-store" })
      .then(function (r) {
        if (r.status === 401) {
          say("signed out: open /status?token=… again", "bad");
          return null;
        }
        if (!r.ok) {
          say("error " + r.status, "bad");
          return null;
        }
        return r.text();
      })
      .then(function (html) {
        if (!html) {
          return;
        }
        var next = new DOMParser().parseFromString(html, "text/html").getElementById("live");
        var live = document.getElementById("live");
        if (next && live) {
          live.replaceWith(document.importNode(next, true));
          say("live · " + new Date().toLocaleTimeString(), "muted");
        }
      })
      .catch(function () {
        say("supernode unreachable", "bad");
      })
      .then(function () {
        busy = false;
      });
  }

  say("live", "muted");
  setInterval(refresh, 2000);
  document.addEventListener("visibilitychange", refresh);
})();

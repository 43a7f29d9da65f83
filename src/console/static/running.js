// Refreshes the running sessions table of P/running every 5 seconds (same origin).
// The fragment is the console's own server-rendered HTML.
(function () {
  "use strict";
  var holder = document.getElementById("running");
  if (!holder) { return; }
  var url = holder.getAttribute("data-fragment");
  function refresh() {
    fetch(url, { credentials: "same-origin", cache: "no-store" })
      .then(function (answer) {
        if (!answer.ok) { throw new Error(String(answer.status)); }
        return answer.text();
      })
      .then(function (html) {
        var parsed = new DOMParser().parseFromString(html, "text/html");
        var fresh = parsed.getElementById("running-sessions");
        var current = document.getElementById("running-sessions");
        if (fresh && current) { current.replaceWith(document.importNode(fresh, true)); }
        holder.setAttribute("data-updated", new Date().toISOString());
      })
      .catch(function () { holder.setAttribute("data-stale", "1"); });
  }
  setInterval(refresh, 5000);
}());

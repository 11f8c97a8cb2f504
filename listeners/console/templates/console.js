// Reloads a list page every data-refresh seconds, so a queue or a failure shows without a click; never while
// the user is typing in (or has changed) one of the page's forms, and not while the tab is hidden.
(function () {
  "use strict";
  var seconds = Number(document.body.getAttribute("data-refresh") || 0);
  if (!seconds) { return; }
  var edited = false;
  document.addEventListener("input", function () { edited = true; });
  document.addEventListener("change", function () { edited = true; });
  window.setInterval(function () {
    var active = document.activeElement;
    var typing = active && /^(INPUT|SELECT|TEXTAREA|BUTTON)$/.test(active.tagName);
    if (!edited && !typing && document.visibilityState === "visible") { window.location.reload(); }
  }, seconds * 1000);
}());

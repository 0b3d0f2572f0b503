// The console's only script. The pages work without it; it adds the viewer's time zone to the
// sign-in form and draws the state diagram with the locally served mermaid.
(function () {
  "use strict";
  function ready() {
    var zone = document.getElementById("zone");
    if (zone && window.Intl) {
      zone.value = Intl.DateTimeFormat().resolvedOptions().timeZone || "";
    }
    if (window.mermaid && document.querySelector("pre.mermaid")) {
      window.mermaid.initialize({ startOnLoad: false, securityLevel: "strict", theme: "neutral" });
      window.mermaid.run({ querySelector: "pre.mermaid" }).then(function () {
        // The diagram is wider than a phone: bring the current state into view.
        var current = document.querySelector(".diagram g.current, .diagram .node.current");
        var box = document.querySelector(".diagram");
        if (current && box) {
          var shape = current.getBoundingClientRect(), frame = box.getBoundingClientRect();
          box.scrollLeft += shape.left - frame.left - (frame.width - shape.width) / 2;
        }
        document.body.setAttribute("data-diagram", "drawn");
      });
    }
  }
  // A refused filter (422, a bad id) is shown as the whole error page, not swapped in silently.
  document.addEventListener("htmx:responseError", function (event) {
    var url = event.detail.xhr && event.detail.xhr.responseURL;
    if (url) { window.location.assign(url); }
  });
  // Deferred scripts (mermaid among them) have all run by DOMContentLoaded.
  document.addEventListener("DOMContentLoaded", ready);
})();

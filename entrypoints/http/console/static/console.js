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
      window.mermaid.initialize({ startOnLoad: false, securityLevel: "strict", theme: "neutral",
        state: { useMaxWidth: false } });
      window.mermaid.run({ querySelector: "pre.mermaid" }).then(function () {
        document.body.setAttribute("data-diagram", "drawn");
      });
    }
  }
  // Deferred scripts (mermaid among them) have all run by DOMContentLoaded.
  document.addEventListener("DOMContentLoaded", ready);
})();

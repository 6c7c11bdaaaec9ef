// rolloutadmin dashboard: the rollout slider and how pages behave around htmx requests (charts.js draws
// the charts). Loaded as a file (no inline script anywhere) so that the pages can run under a strict
// Content-Security-Policy.
(function () {
  "use strict";

  var BIG_STEP = 25;

  // --- rollout slider: live value while moving, applied on release (the change event) ---
  function initSlider(root) {
    var slider = root.querySelector ? root.querySelector("#rollout-slider") : null;
    if (!slider || slider.dataset.bound) return;
    slider.dataset.bound = "1";
    var output = document.getElementById("rollout-value");
    var form = document.getElementById("rollout-form");
    var current = parseFloat(slider.dataset.current);
    slider.addEventListener("input", function () {
      output.textContent = slider.value + "%";
    });
    // "change" fires when a drag is released, and on every arrow key press: wait until the keys have
    // been still for a moment, then apply the final value once.
    var timer = null;
    slider.addEventListener("change", function () {
      if (timer) window.clearTimeout(timer);
      timer = window.setTimeout(apply, 400);
    });

    function apply() {
      timer = null;
      var target = parseFloat(slider.value);
      if (target === current) return;
      var confirmed = form.querySelector("[data-confirmed]");
      confirmed.value = "";
      var firing = slider.dataset.firing || "";
      if (target > current && (target - current > BIG_STEP || target === 100 || firing)) {
        var ok = window.confirm("Raise the rollout from " + current + "% to " + target + "%? " +
          (firing ? "A " + firing + "." : "That exposes many more users at once."));
        if (!ok) {
          slider.value = Math.round(current);
          output.textContent = current + "%";
          return;
        }
        confirmed.value = "yes";
      }
      htmx.trigger(form, "rollout-apply");
    }
  }

  document.addEventListener("DOMContentLoaded", function () {
    initSlider(document);
  });
  document.addEventListener("htmx:load", function (event) {
    initSlider(event.target);
  });
})();

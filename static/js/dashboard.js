// rolloutadmin dashboard: the rollout slider and how pages behave around htmx requests (charts.js draws
// the charts). Loaded as a file (no inline script anywhere) so that the pages can run under a strict
// Content-Security-Policy.
//
// No answer ever replaces the page. 400 and 409 answers are panels that say what was refused and show the
// current state (base.html's htmx-config swaps them in). Every other failure (401, 403, 404, 500, 503, a
// timeout, no network) leaves the page as it is, says what happened next to the control that failed, and
// refreshes that control's panel so it shows the server's state.
(function () {
  "use strict";

  // --- rollout slider: live value while moving, applied on release (the change event) ---
  function initSlider(root) {
    var slider = root.querySelector ? root.querySelector("#rollout-slider") : null;
    if (!slider || slider.dataset.bound) return;
    slider.dataset.bound = "1";
    var output = document.getElementById("rollout-value");
    var form = document.getElementById("rollout-form");
    var reason = document.getElementById("rollout-reason");
    var current = parseFloat(slider.dataset.current);
    // The server's rule (flags.services.rollout_needs_confirmation) sets the step; without one, every raise asks.
    var bigStep = parseFloat(slider.dataset.bigStep);
    if (isNaN(bigStep)) bigStep = 0;
    slider.addEventListener("input", function () {
      output.textContent = slider.value + "%";
    });
    // While a finger or the mouse holds the thumb, the panel must not refresh under it.
    slider.addEventListener("pointerdown", function () { form.dataset.busy = "1"; });
    slider.addEventListener("pointerup", function () { delete form.dataset.busy; });
    slider.addEventListener("pointercancel", function () { delete form.dataset.busy; });
    // "change" fires when a drag is released, and on every arrow key press: wait until the keys have
    // been still for a moment, then apply the final value once.
    var timer = null;
    slider.addEventListener("change", function () {
      if (timer) window.clearTimeout(timer);
      form.dataset.busy = "1";
      timer = window.setTimeout(apply, 400);
    });
    // Enter in the reason box applies the slider's value (after "give a reason").
    form.addEventListener("submit", function (event) {
      event.preventDefault();
      apply();
    });

    function reset() {
      slider.value = Math.round(current);
      output.textContent = current + "%";
    }

    function apply() {
      timer = null;
      delete form.dataset.busy;
      var target = parseFloat(slider.value);
      if (target === current) return;
      if (form.dataset.reasonRequired === "1" && reason && !reason.value.trim()) {
        // The server would refuse it too (flags.services.require_reason); asking first keeps the value.
        form.dataset.busy = "1";
        say(form, "Give a reason for moving the rollout to " + target + "%, then press Enter.", "reason");
        reason.focus();
        return;
      }
      var confirmed = form.querySelector("[data-confirmed]");
      confirmed.value = "";
      var firing = slider.dataset.firing || "";
      if (target > current && (target - current > bigStep || target === 100 || firing)) {
        var ok = window.confirm("Raise the rollout from " + current + "% to " + target + "%? " +
          (firing ? "A " + firing + "." : "That exposes many more users at once."));
        if (!ok) {
          reset();
          return;
        }
        confirmed.value = "yes";
      }
      htmx.trigger(form, "rollout-apply");
    }
  }

  // --- messages next to a control ---
  // Puts one message after `anchor` (a form, or a panel's heading), replacing the one already there.
  function say(anchor, text, kind, link) {
    var next = anchor.nextElementSibling;
    if (next && next.classList.contains("request-error")) next.remove();
    var p = document.createElement("p");
    p.className = "alert error request-error";
    p.setAttribute("role", "alert");
    if (kind) p.dataset.kind = kind;
    p.textContent = text;
    if (link) {
      var a = document.createElement("a");
      a.href = link.href;
      a.textContent = link.text;
      p.appendChild(document.createTextNode(" "));
      p.appendChild(a);
    }
    anchor.insertAdjacentElement("afterend", p);
    return p;
  }

  function serverMessage(xhr) {
    var type = (xhr.getResponseHeader && xhr.getResponseHeader("Content-Type")) || "";
    var body = xhr.responseText || "";
    if (type.indexOf("text/plain") === 0) return body.trim().slice(0, 300);
    if (type.indexOf("application/json") === 0) {
      try { var data = JSON.parse(body); return String(data.message || data.detail || ""); } catch (e) { return ""; }
    }
    if (type.indexOf("text/html") === 0) {
      // Not DOMParser: the parsed page's own inline styles would count as violations of this page's CSP.
      var match = /<[^>]*\bdata-error-message\b[^>]*>([\s\S]*?)<\/[a-z0-9]+>/i.exec(body);
      if (!match) return "";
      var decoder = document.createElement("textarea");
      decoder.innerHTML = match[1].replace(/<[^>]*>/g, "");
      return decoder.value.replace(/\s+/g, " ").trim();
    }
    return "";
  }

  function describe(event) {
    var xhr = event.detail.xhr;
    if (event.type === "htmx:timeout") return "The server did not answer in time.";
    if (event.type === "htmx:sendError" || !xhr || xhr.status === 0) {
      return "Could not reach the server: check the connection.";
    }
    var said = serverMessage(xhr);
    var generic = {
      401: "Your session has ended: log in again, then retry.",
      403: "You are not allowed to do this.",
      404: "Not found: it may have been deleted.",
      429: "Too many requests: wait a moment, then retry.",
      500: "The server failed (500); the error is in its log.",
      502: "The server is unreachable (502).",
      503: "The service is unavailable (503), probably its database.",
      504: "The server did not answer in time (504)."
    }[xhr.status] || "The request failed (" + xhr.status + ").";
    return said || generic;
  }

  // The panel (a section that refreshes itself) holding `elt`, or null.
  function panelOf(elt) {
    return elt && elt.closest ? elt.closest("section[hx-get]") : null;
  }

  // What to say once the panel has been reloaded: keyed by panel id, placed after the control of that id.
  var pending = {};

  function onFailure(event) {
    var detail = event.detail;
    var elt = detail.elt;
    var verb = ((detail.requestConfig && detail.requestConfig.verb) || "get").toLowerCase();
    var text = describe(event);
    var status = detail.xhr ? detail.xhr.status : 0;
    var login = status === 401 ? { href: "/login/?next=" + encodeURIComponent(location.pathname + location.search),
                                    text: "Log in" } : null;
    var panel = panelOf(elt);
    if (verb === "get") {
      // A refresh failed: keep showing what we had, and say since when it is old.
      var target = panel || elt;
      var heading = target.querySelector("h2") || target;
      say(heading, "Could not refresh: " + text + " Showing the state as of " +
        new Date().toISOString().slice(11, 19) + " UTC; retrying.", "refresh", login);
      return;
    }
    var control = elt.closest("form") || elt;
    var message = "Not saved: " + text;
    say(control, message, "request", login);
    resetSlider();
    if (panel && panel.id && status !== 401) {
      // Show the server's current state, then the message again next to the same control.
      pending[panel.id] = { anchor: control.id, text: message };
      // If this fails too, the failure handler says so; the promise's rejection needs no more.
      htmx.ajax("GET", panel.getAttribute("hx-get"), { source: panel, target: panel, swap: "outerHTML" })
        .then(null, function () {});
    }
  }

  function resetSlider() {
    var slider = document.getElementById("rollout-slider");
    if (!slider) return;
    var current = parseFloat(slider.dataset.current);
    slider.value = Math.round(current);
    var output = document.getElementById("rollout-value");
    if (output) output.textContent = current + "%";
    var form = document.getElementById("rollout-form");
    if (form) delete form.dataset.busy;
  }

  // base.html's htmx-config treats 401, 403, 404, 429 and 5xx answers as handled, not as htmx errors (htmx
  // would log each to the console), and swaps none of them: they are caught here.
  document.addEventListener("htmx:afterRequest", function (event) {
    var xhr = event.detail.xhr;
    if (xhr && xhr.status >= 400 && xhr.status !== 400 && xhr.status !== 409) onFailure(event);
  });
  document.addEventListener("htmx:sendError", onFailure);
  document.addEventListener("htmx:timeout", onFailure);

  // --- a panel's refresh must not undo what the user is doing ---
  // Skip a periodic refresh while a control in the panel is held or waits to be applied.
  document.addEventListener("htmx:beforeRequest", function (event) {
    var detail = event.detail, elt = detail.elt;
    var verb = ((detail.requestConfig && detail.requestConfig.verb) || "get").toLowerCase();
    if (verb === "get" && elt.matches && elt.matches("section[hx-get]") && elt.querySelector("[data-busy]")) {
      event.preventDefault();
    }
  });

  // Keep typed reasons (and the focus) across a refresh, and after a refused change (400, 409): only a
  // change that was saved clears its reason.
  // Keyed by panel id: panels refreshing at the same moment settle one after the other.
  var kept = {};
  document.addEventListener("htmx:beforeSwap", function (event) {
    var detail = event.detail, target = detail.target;
    var verb = ((detail.requestConfig && detail.requestConfig.verb) || "get").toLowerCase();
    if (!target || !target.id || !detail.shouldSwap) return;
    delete kept[target.id];
    if (verb !== "get" && detail.xhr.status < 400) return;
    var values = {};
    target.querySelectorAll("input[type=text][name]").forEach(function (input) {
      var form = input.closest("form");
      if (input.value && form && form.id) values[form.id + " " + input.name] = input.value;
    });
    var active = document.activeElement;
    kept[target.id] = { values: values, focus: active && target.contains(active) && active.id ? active.id : null };
  });

  document.addEventListener("htmx:load", function (event) {
    var root = event.target;
    initSlider(root);
    if (!root.id) return;
    var saved = kept[root.id];
    if (saved) {
      delete kept[root.id];
      Object.keys(saved.values).forEach(function (key) {
        var parts = key.split(" ");
        var input = root.querySelector("#" + CSS.escape(parts[0]) + " input[name='" + parts[1] + "']");
        if (input && !input.value) input.value = saved.values[key];
      });
      if (saved.focus) {
        var again = document.getElementById(saved.focus);
        if (again) again.focus();
      }
    }
    var note = pending[root.id];
    if (note) {
      delete pending[root.id];
      var anchor = (note.anchor && root.querySelector("#" + CSS.escape(note.anchor))) || root.querySelector("h2") || root;
      say(anchor, note.text, "request");
    }
  });

  document.addEventListener("DOMContentLoaded", function () {
    initSlider(document);
  });
})();

// agentmill dashboard: behaviour shared by every page. No inline script anywhere (CSP).
"use strict";
(function () {
  const meta = document.querySelector('meta[name="csrf-token"]');
  const csrf = meta ? meta.getAttribute("content") : "";

  // htmx requests carry the session's CSRF token (forms carry it as a hidden field).
  document.addEventListener("htmx:configRequest", function (event) {
    if (csrf) event.detail.headers["X-CSRF-Token"] = csrf;
  });

  // A form with data-confirm asks first (cancel, reject...).
  document.addEventListener("submit", function (event) {
    const form = event.target;
    if (!(form instanceof HTMLFormElement)) return;
    const question = form.dataset.confirm;
    if (question && !window.confirm(question)) event.preventDefault();
  });

  // Times: the exact moment in the visitor's time zone as a tooltip.
  function localise(root) {
    root.querySelectorAll("time[datetime]").forEach(function (node) {
      const when = new Date(node.getAttribute("datetime"));
      if (!isNaN(when.getTime())) node.title = when.toLocaleString();
    });
  }
  document.addEventListener("DOMContentLoaded", function () { localise(document); });
  document.addEventListener("htmx:afterSwap", function (event) { localise(event.target); });
})();

// agentmill run page: follows the run's events (GET /runs/{id}/stream, Server-Sent Events)
// and updates the DAG and the step panels in place. Untrusted text (model output, tool
// arguments, errors) only ever goes into the page as text: textContent / Text nodes.
"use strict";
(function () {
  const root = document.getElementById("run-page");
  if (!root) return;
  const STATES = ["pending", "running", "waiting", "succeeded", "failed", "skipped", "cancelled"];
  const FINAL = new Set(["succeeded", "failed", "skipped", "cancelled"]);
  let lastSeq = Number(root.dataset.lastSeq || "0");
  let reloading = false;

  // The DOM id escaping of web/dag.py's dag_node_id: [A-Za-z0-9-] kept, "_" doubled,
  // anything else as _x<hex code point>_.
  function escapeKey(key) {
    let out = "";
    for (const char of key) {
      if (char === "_") out += "__";
      else if (/^[A-Za-z0-9-]$/.test(char)) out += char;
      else out += "_x" + char.codePointAt(0).toString(16) + "_";
    }
    return out;
  }
  function stepIdOf(key) {
    const at = key.indexOf("[");
    return at < 0 ? key : key.slice(0, at);
  }
  function dagNode(key) { return document.getElementById("dag-" + escapeKey(stepIdOf(key))); }

  function panelOf(key) {
    const found = document.getElementById("step-" + escapeKey(key));
    if (found) return found;
    const template = document.getElementById("run-step-template");
    if (!template) return null;
    const panel = template.content.firstElementChild.cloneNode(true);
    panel.id = "step-" + escapeKey(key);
    panel.dataset.key = key;
    panel.dataset.step = stepIdOf(key);
    panel.querySelector(".step-key").textContent = key;
    const siblings = document.querySelectorAll("#run-steps > .step");
    const same = Array.from(siblings).filter((p) => p.dataset.step === panel.dataset.step);
    const after = same.length ? same[same.length - 1] : null;
    if (after) after.after(panel);
    else document.getElementById("run-steps").append(panel);
    // A foreach step's items take the place of the step's panel shown before it started.
    const unstarted = key === panel.dataset.step ? null : document.getElementById("step-" + escapeKey(panel.dataset.step));
    if (unstarted && unstarted.dataset.state === "pending") unstarted.remove();
    return panel;
  }

  function swapState(element, state) {
    STATES.forEach((name) => element.classList.remove("state-" + name));
    element.classList.add("state-" + (STATES.includes(state) ? state : "pending"));
  }
  function setPanelState(panel, state) {
    swapState(panel, state);
    panel.dataset.state = state;
    const badge = panel.querySelector(".step-state");
    swapState(badge, state);
    badge.textContent = state;
  }
  function setState(key, state) {
    const node = dagNode(key);
    if (node) swapState(node, state);
    const panel = panelOf(key);
    if (panel) setPanelState(panel, state);
    return panel;
  }
  function field(panel, name, text) {
    const cell = panel.querySelector('[data-field="' + name + '"]');
    if (cell && text !== undefined && text !== null) cell.textContent = String(text);
  }
  function showError(panel, text) {
    const box = panel.querySelector(".step-error");
    box.textContent = text || "";
    box.hidden = !text;
  }
  function duration(seconds) {
    if (typeof seconds !== "number") return "";
    if (seconds < 10) return seconds.toFixed(2) + "s";
    if (seconds < 60) return seconds.toFixed(1) + "s";
    const minutes = Math.floor(seconds / 60);
    return minutes + "m " + String(Math.floor(seconds % 60)).padStart(2, "0") + "s";
  }

  // A new attempt starts the step's text over (docs/events.md: `supersedes`).
  function startAttempt(panel, attempt) {
    panel.dataset.attempt = String(attempt);
    panel.querySelector(".step-output").textContent = "";
    showError(panel, "");
    field(panel, "attempt", attempt);
  }

  function onStarted(event) {
    const panel = setState(event.step, event.data.gate ? "waiting" : "running");
    if (!panel) return;
    if (event.attempt > Number(panel.dataset.attempt || "0") || event.data.supersedes) {
      startAttempt(panel, event.attempt);
    }
  }
  function onOutput(event) {
    const panel = panelOf(event.step);
    if (!panel) return;
    const current = Number(panel.dataset.attempt || "0");
    if (event.attempt < current) return; // a superseded attempt's text
    if (event.attempt > current) startAttempt(panel, event.attempt);
    else if (FINAL.has(panel.dataset.state)) return; // already shown whole, from its record
    panel.querySelector(".step-output").append(String(event.data.text || ""));
  }
  function onFinished(event) {
    const panel = setState(event.step, "succeeded");
    if (!panel) return;
    const data = event.data;
    field(panel, "duration", duration(data.elapsed));
    if (data.model) field(panel, "model", data.model);
    if (data.usage) field(panel, "tokens", (data.usage.input_tokens || 0) + " in / " + (data.usage.output_tokens || 0) + " out");
    if (typeof data.cost_usd === "number") field(panel, "cost", "$" + data.cost_usd.toFixed(4));
  }
  function onFailed(event) {
    const panel = setState(event.step, "failed");
    if (panel) showError(panel, event.data.error);
  }
  function onRetrying(event) {
    const panel = setState(event.step, "running");
    if (panel) showError(panel, "retrying after: " + (event.data.error || ""));
  }
  function onDecided(event) {
    const gate = event.data.gate || event.step;
    document.querySelectorAll(".gate").forEach((box) => {
      if (box.dataset.gate === gate) box.remove();
    });
    setState(event.step, "running");
  }
  function onCliTool(event) {
    // A command-line agent's own tool use: a row of its own (no call id, no result).
    onToolCall({ step: event.step, data: { call: "", name: event.data.tool, args: "" } }, "cli tool", "used");
  }
  function onToolCall(event, kind, status) {
    const panel = panelOf(event.step);
    if (!panel) return;
    const row = document.createElement("tr");
    row.className = "call status-" + (status || "running");
    row.dataset.call = String(event.data.call);
    const cells = [event.data.call, kind || "tool", event.data.name, status || "running", null, "", ""];
    cells.forEach((text, index) => {
      const cell = document.createElement("td");
      if (index === 4) {
        const pre = document.createElement("pre");
        pre.className = "call-args";
        pre.textContent = String(event.data.args || "");
        cell.append(pre);
      } else {
        cell.textContent = String(text);
      }
      cell.className = ["", "", "call-name", "call-status", "", "num call-duration", "call-result"][index];
      row.append(cell);
    });
    panel.querySelector(".step-call-rows").append(row);
    panel.querySelector(".step-calls").hidden = false;
  }
  function onToolResult(event) {
    const panel = panelOf(event.step);
    if (!panel) return;
    let row = null;
    panel.querySelectorAll(".step-call-rows tr").forEach((tr) => {
      if (tr.dataset.call === String(event.data.call)) row = tr;
    });
    if (!row) { onToolCall(event); row = panel.querySelector(".step-call-rows tr:last-child"); }
    const failed = Boolean(event.data.error);
    row.className = "call status-" + (failed ? "failed" : "succeeded");
    row.querySelector(".call-status").textContent = failed ? "failed" : "succeeded";
    row.querySelector(".call-duration").textContent = duration(event.data.duration);
    row.querySelector(".call-result").textContent = failed ? String(event.data.error) : event.data.size + " characters";
  }
  function onRunStatus(status) {
    const badge = document.getElementById("run-status");
    if (!badge) return;
    badge.className = "badge status-" + status;
    badge.textContent = status;
  }
  function refreshSummary() {
    const url = root.dataset.summary;
    if (window.htmx) {
      window.htmx.ajax("GET", url, { target: "#run-summary", swap: "outerHTML" });
    } else if (!reloading) {
      reloading = true;
      window.location.reload();
    }
  }
  function reloadOnce() {
    if (reloading) return;
    reloading = true;
    window.location.reload();
  }

  const handlers = {
    run_started: () => onRunStatus("running"),
    run_resumed: () => onRunStatus("running"),
    step_started: onStarted,
    step_output: onOutput,
    step_finished: onFinished,
    step_failed: onFailed,
    step_retrying: onRetrying,
    step_skipped: (event) => setState(event.step, "skipped"),
    step_blocked: (event) => setState(event.step, "skipped"),
    step_tool_call: (event) => onToolCall(event),
    step_tool: onCliTool,
    step_tool_result: onToolResult,
    approval_requested: reloadOnce, // the gate's form comes with the page
    approval_decided: onDecided,
    run_finished: (event) => { onRunStatus(String(event.data.status || "")); refreshSummary(); },
    run_interrupted: () => { onRunStatus("interrupted"); refreshSummary(); },
  };

  function receive(message) {
    let event;
    try { event = JSON.parse(message.data); } catch (error) { return; }
    if (typeof event.seq !== "number" || event.seq <= lastSeq) return; // seen already
    lastSeq = event.seq;
    root.dataset.seen = String(lastSeq);
    const handle = handlers[event.kind];
    if (handle && (event.step || !event.kind.startsWith("step_"))) handle(event);
  }

  // After the summary (and its DAG) is swapped in: steps a finished run never reached.
  document.addEventListener("htmx:afterSwap", function (event) {
    if (!(event.target instanceof Element) || event.target.id !== "run-summary") return;
    document.querySelectorAll("#run-steps > .step").forEach((panel) => {
      const node = dagNode(panel.dataset.step);
      const state = node && STATES.find((name) => node.classList.contains("state-" + name));
      if (panel.dataset.state === "pending" && state && state !== "pending") setPanelState(panel, state);
    });
  });

  // Clicking a step's box in the DAG brings its panel into view.
  document.addEventListener("click", function (event) {
    const node = event.target instanceof Element ? event.target.closest(".dag-node") : null;
    if (!node) return;
    const panel = Array.from(document.querySelectorAll("#run-steps > .step")).find(
      (p) => p.dataset.step === node.dataset.step);
    if (!panel) return;
    document.querySelectorAll("#run-steps > .step.target").forEach((p) => p.classList.remove("target"));
    panel.classList.add("target");
    panel.scrollIntoView({ block: "start" });
  });

  // The stream: resumed after the last event seen; closed while the tab has been hidden for
  // a while (a background tab holds none of the key's stream slots) and opened again when
  // it is shown; a stream the server ended or refused is said so while the run goes on.
  const KINDS = Object.keys(handlers).concat(["step_stderr", "step_waiting", "run_queued",
    "step_session", "step_tool_output"]);
  const HIDDEN_GRACE_MS = 30000;
  const streamUrl = root.dataset.stream.split("?")[0];
  const notice = document.getElementById("stream-notice");
  let source = null;
  let hiddenTimer = null;

  function runGoesOn() {
    const status = document.getElementById("run-status");
    return !!status && ["pending", "running"].includes(status.textContent.trim());
  }
  function say(text) {
    if (!notice) return;
    notice.textContent = text;
    notice.hidden = !text;
  }
  function connect() {
    source = new EventSource(streamUrl + "?after=" + lastSeq);
    KINDS.forEach((kind) => source.addEventListener(kind, receive));
    source.addEventListener("open", () => { root.dataset.stream_state = "open"; say(""); });
    source.addEventListener("error", () => {
      const closed = source !== null && source.readyState === EventSource.CLOSED;
      root.dataset.stream_state = closed ? "closed" : "reconnecting";
      if (closed && runGoesOn() && !reloading) {
        say("Live updates stopped (signed out, too many open pages, or the server went away): reload the page.");
      }
    });
  }
  function disconnect() {
    if (source === null) return;
    source.close();
    source = null;
    root.dataset.stream_state = "paused";
  }
  document.addEventListener("visibilitychange", () => {
    if (document.hidden) {
      hiddenTimer = setTimeout(disconnect, HIDDEN_GRACE_MS);
      return;
    }
    clearTimeout(hiddenTimer);
    if (source === null && root.dataset.stream_state === "paused") connect();
  });
  window.addEventListener("pagehide", disconnect);
  connect();
})();

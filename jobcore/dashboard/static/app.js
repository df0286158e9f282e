// The jobcore dashboard page: polls the JSON API and keeps the DOM in step.
// Job data is untrusted: it only ever reaches the page through textContent, attribute
// setters and form values, never as markup. Query parameters: ?refresh=MS (default 1000),
// ?token=... (the access token, when the server requires one).
"use strict";

(function () {
  const STATUSES = ["pending", "scheduled", "running", "completed", "failed", "cancelled"];
  const CANCELLABLE = new Set(["pending", "scheduled", "running"]);
  const RETRYABLE = new Set(["failed", "cancelled"]);

  const params = new URLSearchParams(window.location.search);
  const refreshMs = Math.max(100, parseInt(params.get("refresh"), 10) || 1000);
  const accessToken = params.get("token");
  const csrfToken = document.querySelector('meta[name="jobcore-csrf-token"]').content;

  const state = {
    filters: { status: "", owner: "", tag: "" },
    selected: null,          // id of the job shown in the detail panel
    rows: new Map(),         // job id -> <tr>, kept so rows update in place
    cancelling: new Set(),   // running jobs whose cancel was requested here
    inFlight: false,
    timer: null,
  };

  const $ = (selector) => document.querySelector(selector);

  // -- talking to the server ---------------------------------------------------------------
  async function request(method, path) {
    const init = { method, cache: "no-store", headers: { Accept: "application/json" } };
    if (accessToken) init.headers.Authorization = "Bearer " + accessToken;
    if (method === "POST") init.headers["X-CSRF-Token"] = csrfToken;
    const response = await fetch(path, init);
    let body = null;
    try {
      body = await response.json();
    } catch (err) {
      body = null;
    }
    if (!response.ok) {
      throw new Error((body && body.error) || response.status + " " + response.statusText);
    }
    return body;
  }

  // -- building DOM ------------------------------------------------------------------------
  function el(tag, className, text) {
    const node = document.createElement(tag);
    if (className) node.className = className;
    if (text !== undefined && text !== null) node.textContent = String(text);
    return node;
  }

  function formatTime(iso) {
    return iso ? new Date(iso).toLocaleString() : "–";
  }

  function formatAge(seconds) {
    if (seconds === null || seconds === undefined) return "–";
    const s = Math.round(seconds);
    if (s < 60) return s + "s";
    if (s < 3600) return Math.floor(s / 60) + "m " + (s % 60) + "s";
    return Math.floor(s / 3600) + "h " + Math.floor((s % 3600) / 60) + "m";
  }

  function percent(progress) {
    return Math.round((progress || 0) * 100);
  }

  function setBar(bar, progress, message) {
    const pct = percent(progress);
    bar.setAttribute("aria-valuenow", String(pct));
    bar.title = message || pct + "%";
    bar.querySelector(".fill").style.width = pct + "%";
    bar.querySelector(".label").textContent = pct + "%";
  }

  function makeBar() {
    const bar = el("div", "bar");
    bar.setAttribute("role", "progressbar");
    bar.setAttribute("aria-valuemin", "0");
    bar.setAttribute("aria-valuemax", "100");
    bar.append(el("div", "fill"), el("span", "label"));
    return bar;
  }

  function createRow(id) {
    const row = el("tr");
    row.dataset.jobId = id;
    const idButton = el("button", "link job-id", id.slice(0, 8));
    idButton.type = "button";
    idButton.dataset.action = "show";
    idButton.title = id;
    const cells = {
      id: el("td"), name: el("td", "name"), status: el("td"), progress: el("td"),
      attempts: el("td", "num"), owner: el("td"), tags: el("td", "tags"), created: el("td", "time"),
      actions: el("td", "actions"),
    };
    cells.id.append(idButton);
    cells.status.append(el("span", "status"));
    cells.progress.append(makeBar());
    for (const action of ["cancel", "retry"]) {
      const button = el("button", action, action === "cancel" ? "Cancel" : "Retry");
      button.type = "button";
      button.dataset.action = action;
      cells.actions.append(button);
    }
    row.append(...Object.values(cells));
    row.cells_ = cells;
    return row;
  }

  function updateRow(row, job) {
    const cells = row.cells_;
    cells.name.textContent = job.name;
    cells.name.title = job.function_name;
    const status = cells.status.firstChild;
    status.textContent = job.status;
    status.className = "status " + job.status;
    setBar(cells.progress.firstChild, job.progress, job.progress_message);
    cells.attempts.textContent = String(job.attempts);
    cells.owner.textContent = job.owner || "–";
    cells.tags.textContent = job.tags.join(", ");
    cells.created.textContent = formatTime(job.created_at);
    if (job.status !== "running") state.cancelling.delete(job.id);
    const cancel = cells.actions.querySelector(".cancel");
    cancel.hidden = !CANCELLABLE.has(job.status);
    cancel.disabled = state.cancelling.has(job.id);
    cancel.textContent = cancel.disabled ? "Cancelling…" : "Cancel";
    cells.actions.querySelector(".retry").hidden = !RETRYABLE.has(job.status);
    row.classList.toggle("selected", job.id === state.selected);
  }

  function renderJobs(jobs) {
    const tbody = $("#jobs tbody");
    const seen = new Set();
    let previous = null;
    for (const job of jobs) {
      seen.add(job.id);
      let row = state.rows.get(job.id);
      if (!row) {
        row = createRow(job.id);
        state.rows.set(job.id, row);
      }
      updateRow(row, job);
      const expected = previous ? previous.nextSibling : tbody.firstChild;
      if (expected !== row) tbody.insertBefore(row, expected);
      previous = row;
    }
    for (const [id, row] of state.rows) {
      if (!seen.has(id)) {
        row.remove();
        state.rows.delete(id);
      }
    }
    $("#empty").hidden = jobs.length > 0;
  }

  function renderStats(stats) {
    for (const dd of document.querySelectorAll("#stats [data-stat]")) {
      const key = dd.dataset.stat;
      dd.textContent = key === "oldest_pending_age" ? formatAge(stats[key]) : String(stats[key] ?? "–");
    }
    $("#dlq-count").textContent = String(stats.failed);
    $("#dlq-retry").disabled = !stats.failed;
  }

  function field(list, label, value) {
    if (value === null || value === undefined || value === "") return;
    list.append(el("dt", null, label), el("dd", null, value));
  }

  function renderDetail(job) {
    $("#detail-id").textContent = job.id;
    const fields = $("#detail-fields");
    fields.replaceChildren();
    field(fields, "name", job.name);
    field(fields, "function", job.function_name);
    field(fields, "status", job.status);
    field(fields, "progress", percent(job.progress) + "% " + (job.progress_message || ""));
    field(fields, "attempts", job.attempts + " (max retries " + job.max_retries + ")");
    field(fields, "priority", job.priority);
    field(fields, "owner", job.owner);
    field(fields, "tags", job.tags.join(", "));
    field(fields, "created", job.created_at && formatTime(job.created_at));
    field(fields, "scheduled", job.scheduled_at && formatTime(job.scheduled_at));
    field(fields, "started", job.started_at && formatTime(job.started_at));
    field(fields, "completed", job.completed_at && formatTime(job.completed_at));
    field(fields, "worker", job.worker_id);
    field(fields, "depends on", job.depends_on.join(", "));
    if (Object.keys(job.metadata || {}).length) field(fields, "metadata", JSON.stringify(job.metadata));
    if (job.result !== null) field(fields, "result", JSON.stringify(job.result));
    field(fields, "error type", job.error_type);
    field(fields, "error", job.error);
    $("#detail-traceback-section").hidden = !job.traceback;
    $("#detail-traceback").textContent = job.traceback || "";
    const logs = $("#detail-logs");
    logs.replaceChildren(...job.logs.map((entry) => {
      const item = el("li", "log " + entry.level);
      item.append(el("time", null, formatTime(entry.timestamp)), el("span", "level", entry.level),
                  el("span", "message", entry.message));
      return item;
    }));
    $("#detail").hidden = false;
  }

  // -- the refresh loop --------------------------------------------------------------------
  function jobsQuery() {
    const query = new URLSearchParams({ limit: "100" });
    for (const [key, value] of Object.entries(state.filters)) {
      if (value) query.set(key, value);
    }
    return "/api/jobs?" + query.toString();
  }

  function setConnection(text, ok) {
    const node = $("#connection");
    node.textContent = text;
    node.classList.toggle("offline", !ok);
  }

  async function refresh() {
    if (state.inFlight) return;
    state.inFlight = true;
    try {
      const [stats, jobs, detail] = await Promise.all([
        request("GET", "/api/stats"),
        request("GET", jobsQuery()),
        state.selected ? request("GET", "/api/jobs/" + encodeURIComponent(state.selected)).catch(() => null) : null,
      ]);
      renderStats(stats);
      renderJobs(jobs.jobs);
      if (detail) renderDetail(detail);
      setConnection("live · updated " + new Date().toLocaleTimeString(), true);
    } catch (err) {
      setConnection("offline: " + err.message, false);
    } finally {
      state.inFlight = false;
    }
  }

  function schedule(delay) {
    window.clearTimeout(state.timer);
    state.timer = window.setTimeout(async () => {
      if (!document.hidden) await refresh();
      schedule(refreshMs);
    }, delay);
  }

  function flash(text) {
    const node = $("#flash");
    node.textContent = text;
    node.hidden = !text;
  }

  // -- user actions ------------------------------------------------------------------------
  async function act(action, id) {
    try {
      if (action === "show") {
        state.selected = id;
        renderDetail(await request("GET", "/api/jobs/" + encodeURIComponent(id)));
        $("#detail").scrollIntoView({ block: "nearest" });
      } else {
        const reply = await request("POST", "/api/jobs/" + encodeURIComponent(id) + "/" + action);
        if (action === "cancel" && reply.cancel_requested) state.cancelling.add(id);
        flash("");
      }
    } catch (err) {
      flash(action + " failed: " + err.message);
    }
    schedule(0);
  }

  function readFilters() {
    state.filters = {
      status: $("#filter-status").value,
      owner: $("#filter-owner").value.trim(),
      tag: $("#filter-tag").value.trim(),
    };
    schedule(0);
  }

  function init() {
    const select = $("#filter-status");
    for (const status of STATUSES) select.append(new Option(status, status));
    const form = $("#filters");
    form.addEventListener("input", readFilters);
    form.addEventListener("change", readFilters);
    form.addEventListener("submit", (event) => event.preventDefault());
    form.addEventListener("reset", () => window.setTimeout(readFilters, 0));
    $("#jobs tbody").addEventListener("click", (event) => {
      const button = event.target.closest("button[data-action]");
      const row = button && button.closest("tr[data-job-id]");
      if (row && !button.disabled) act(button.dataset.action, row.dataset.jobId);
    });
    $("#detail-close").addEventListener("click", () => {
      state.selected = null;
      $("#detail").hidden = true;
      schedule(0);
    });
    $("#dlq-show").addEventListener("click", () => {
      select.value = "failed";
      readFilters();
    });
    $("#dlq-retry").addEventListener("click", async () => {
      if (!window.confirm("Re-queue every failed job?")) return;
      try {
        const reply = await request("POST", "/api/dlq/retry");
        flash("re-queued " + reply.count + " failed job(s)");
      } catch (err) {
        flash("retry all failed: " + err.message);
      }
      schedule(0);
    });
    document.addEventListener("visibilitychange", () => {
      if (!document.hidden) schedule(0);
    });
    schedule(0);
  }

  init();
})();

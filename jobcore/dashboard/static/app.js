// The jobcore dashboard page: polls the JSON API and keeps the DOM in step.
// Job data is untrusted: it only ever reaches the page through textContent, attribute
// setters and form values, never as markup. Query parameters: ?refresh=MS (default 1000),
// ?token=... (the access token, when the server requires one).
// A refresh writes a node only when its text changes (a write clears any text selection in
// it), and the open job's detail is fetched apart from the stats and table: its log comes
// once, then only the lines added since. "Show them" turns the table into the dead-letter
// queue (GET /api/dlq: the most recently failed first, with when each failed) until a
// filter is changed.
"use strict";

(function () {
  const STATUSES = ["pending", "scheduled", "running", "completed", "failed", "cancelled"];
  const CANCELLABLE = new Set(["pending", "scheduled", "running"]);
  const RETRYABLE = new Set(["failed", "cancelled"]);
  const TERMINAL = new Set(["completed", "failed", "cancelled"]);
  const DETAIL_LOGS = 500;   // log lines the detail shows at most (the server's DETAIL_LOGS)

  const params = new URLSearchParams(window.location.search);
  // setTimeout runs a delay above 2^31 - 1 ms at once: a larger ?refresh= would poll nonstop.
  const refreshMs = Math.min(2147483647, Math.max(100, parseInt(params.get("refresh"), 10) || 1000));
  const accessToken = params.get("token");
  const csrfToken = document.querySelector('meta[name="jobcore-csrf-token"]').content;

  const state = {
    filters: { status: "", owner: "", tag: "" },
    deadLetters: false,      // the table shows the dead-letter queue ("Show them"), not /api/jobs
    selected: null,          // id of the job shown in the detail panel
    rows: new Map(),         // job id -> <tr>, kept so rows update in place
    cancelling: new Set(),   // running jobs whose cancel was requested here
    inFlight: false,
    again: false,            // a refresh was asked for while one was in flight: run one next
    timer: null,
  };
  const detail = {
    id: null,                // the job whose fields and log are on show
    key: null,               // its fields as JSON, to skip redrawing unchanged ones
    logCount: 0,             // log lines of that job read so far (those shown are the last of them)
    loading: null,           // id of the job whose detail is being fetched
  };

  const $ = (selector) => document.querySelector(selector);

  // -- talking to the server ---------------------------------------------------------------
  // The detail shows a job's result, metadata and progress details as JSON text, and its
  // priority (any 64-bit int). An integer in them that a double cannot hold (a 19-digit
  // order id) is kept as its JSON text, which JSON.stringify writes back as it came;
  // browsers without JSON.rawJSON show it rounded. Every other number is a plain Number,
  // as response.json() makes it.
  const EXACT_FIELDS = new Set(["progress_details", "metadata", "result", "priority"]);
  const exact = typeof JSON.rawJSON === "function"
    ? (key, value, context) => (typeof value === "number" && !Number.isSafeInteger(value) && context
                                && /^-?\d+$/.test(context.source) ? JSON.rawJSON(context.source) : value)
    : undefined;

  function rounded(value) {
    if (JSON.isRawJSON && JSON.isRawJSON(value)) return Number(value.rawJSON);
    if (Array.isArray(value)) return value.map(rounded);
    if (value !== null && typeof value === "object") {
      for (const key of Object.keys(value)) value[key] = rounded(value[key]);
    }
    return value;
  }

  async function requestJob(path) {
    const job = await request("GET", path, exact);
    for (const key of Object.keys(job)) {
      if (!EXACT_FIELDS.has(key)) job[key] = rounded(job[key]);
    }
    return job;
  }

  async function request(method, path, reviver) {
    const init = { method, cache: "no-store", headers: { Accept: "application/json" } };
    if (accessToken) init.headers.Authorization = "Bearer " + accessToken;
    if (method === "POST") init.headers["X-CSRF-Token"] = csrfToken;
    const response = await fetch(path, init);
    let body = null;
    try {
      body = JSON.parse(await response.text(), reviver);
    } catch (err) {
      body = null;
    }
    if (!response.ok) {
      throw new Error((body && body.error) || response.status + " " + response.statusText);
    }
    return body;
  }

  // -- building DOM ------------------------------------------------------------------------
  function setText(node, text) {
    if (node.textContent !== text) node.textContent = text;
  }

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
    const title = message || pct + "%";
    if (bar.title !== title) bar.title = title;
    const fill = bar.querySelector(".fill");
    if (fill.style.width !== pct + "%") fill.style.width = pct + "%";
    setText(bar.querySelector(".label"), pct + "%");
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

  function updateRow(row, job, deadLetters) {
    const cells = row.cells_;
    setText(cells.name, String(job.name));
    if (cells.name.title !== job.function_name) cells.name.title = job.function_name;
    const status = cells.status.firstChild;
    setText(status, job.status);
    if (status.className !== "status " + job.status) status.className = "status " + job.status;
    setBar(cells.progress.firstChild, job.progress, job.progress_message);
    setText(cells.attempts, String(job.attempts));
    setText(cells.owner, job.owner || "–");
    setText(cells.tags, job.tags.join(", "));
    setText(cells.created, formatTime(deadLetters ? job.completed_at : job.created_at));
    if (job.status !== "running") state.cancelling.delete(job.id);
    const cancel = cells.actions.querySelector(".cancel");
    cancel.hidden = !CANCELLABLE.has(job.status);
    cancel.disabled = state.cancelling.has(job.id);
    setText(cancel, cancel.disabled ? "Cancelling…" : "Cancel");
    cells.actions.querySelector(".retry").hidden = !RETRYABLE.has(job.status);
    row.classList.toggle("selected", job.id === state.selected);
  }

  // `deadLetters`: the jobs are the dead-letter queue, shown with when each failed.
  function renderJobs(jobs, deadLetters) {
    const tbody = $("#jobs tbody");
    setText($("#time-heading"), deadLetters ? "Failed" : "Created");
    const seen = new Set();
    let previous = null;
    for (const job of jobs) {
      seen.add(job.id);
      let row = state.rows.get(job.id);
      if (!row) {
        row = createRow(job.id);
        state.rows.set(job.id, row);
      }
      updateRow(row, job, deadLetters);
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
      setText(dd, key === "oldest_pending_age" ? formatAge(stats[key]) : String(stats[key] ?? "–"));
    }
    setText($("#dlq-count"), String(stats.failed));
    $("#dlq-retry").disabled = !stats.failed;
  }

  function hasKeys(value) {
    return value !== null && typeof value === "object" && Object.keys(value).length > 0;
  }

  // The detail's fields as [label, text] pairs, empty ones left out.
  function detailFields(job) {
    const pairs = [];
    const add = (label, value) => {
      if (value !== null && value !== undefined && value !== "") pairs.push([label, String(value)]);
    };
    add("name", job.name);
    add("function", job.function_name);
    add("status", job.status);
    add("progress", percent(job.progress) + "% " + (job.progress_message || ""));
    if (hasKeys(job.progress_details)) add("progress details", JSON.stringify(job.progress_details));
    add("attempts", job.attempts + " (max retries " + job.max_retries + ")");
    add("priority", JSON.stringify(job.priority));
    add("owner", job.owner);
    add("tags", job.tags.join(", "));
    add("cron", job.cron);
    add("created", job.created_at && formatTime(job.created_at));
    add("scheduled", job.scheduled_at && formatTime(job.scheduled_at));
    add("started", job.started_at && formatTime(job.started_at));
    add("completed", job.completed_at && formatTime(job.completed_at));
    add("worker", job.worker_id);
    add("depends on", job.depends_on.join(", "));
    if (hasKeys(job.metadata)) add("metadata", JSON.stringify(job.metadata));
    if (job.result !== null && job.result !== undefined) add("result", JSON.stringify(job.result));
    add("error type", job.error_type);
    add("error", job.error);
    return pairs;
  }

  // Shows the job's fields; false (touching nothing) when they are what is shown already.
  function renderFields(job) {
    const fieldsOnly = Object.assign({}, job);
    delete fieldsOnly.logs;
    delete fieldsOnly.log_count;
    const key = JSON.stringify(fieldsOnly);
    if (key === detail.key) return false;
    detail.key = key;
    setText($("#detail-id"), job.id);
    const list = $("#detail-fields");
    const pairs = detailFields(job);
    const labels = Array.from(list.querySelectorAll("dt"), (node) => node.textContent);
    if (labels.length === pairs.length && pairs.every(([label], i) => labels[i] === label)) {
      const values = list.querySelectorAll("dd");   // same fields: change the values that changed
      pairs.forEach(([, text], i) => setText(values[i], text));
    } else {
      list.replaceChildren(...pairs.flatMap(([label, text]) => [el("dt", null, label), el("dd", null, text)]));
    }
    $("#detail-traceback-section").hidden = !job.traceback;
    setText($("#detail-traceback"), job.traceback || "");
    return true;
  }

  function logItem(entry) {
    const item = el("li", "log " + entry.level);
    item.append(el("time", null, formatTime(entry.timestamp)), el("span", "level", entry.level),
                el("span", "message", entry.message));
    return item;
  }

  // Shows `entries` as the last lines of a log of `total` lines; `append` keeps those shown.
  function renderLogs(entries, total, append) {
    const list = $("#detail-logs");
    if (append) {
      list.append(...entries.map(logItem));
      while (list.children.length > DETAIL_LOGS) list.firstElementChild.remove();
    } else {
      list.replaceChildren(...entries.map(logItem));
    }
    const shown = list.children.length;
    const note = $("#detail-logs-note");
    note.hidden = shown >= total;
    setText(note, shown >= total ? "" : "the last " + shown + " of " + total + " lines");
  }

  function logsPath(id, after) {
    return "/api/jobs/" + encodeURIComponent(id) + "/logs?after=" + after + "&limit=" + DETAIL_LOGS;
  }

  // Brings the open job's detail up to date: all of it when first shown, then its fields
  // when they changed and only the log lines added since (none once it ended unchanged).
  async function refreshDetail() {
    const id = state.selected;
    if (!id || detail.loading === id) return;
    detail.loading = id;
    const current = () => state.selected === id;
    try {
      const path = "/api/jobs/" + encodeURIComponent(id);
      if (detail.id !== id) {
        const job = await requestJob(path);   // the fields and the last DETAIL_LOGS lines
        if (!current()) return;
        detail.id = id;
        detail.key = null;
        detail.logCount = job.log_count;
        renderFields(job);
        renderLogs(job.logs, job.log_count, false);
        $("#detail").hidden = false;
        return;
      }
      const job = await requestJob(path + "?logs=0");
      if (!current()) return;
      const changed = renderFields(job);
      if (!changed && TERMINAL.has(job.status)) return;   // an ended job's log is written
      const page = await request("GET", logsPath(id, detail.logCount));
      if (!current() || detail.id !== id) return;
      if (page.total >= detail.logCount && page.total === detail.logCount + page.logs.length) {
        if (page.logs.length) renderLogs(page.logs, page.total, true);
        detail.logCount = page.total;
      } else {   // more was added than one page holds (or the log was cut): show its tail
        const tail = await request("GET", logsPath(id, Math.max(0, page.total - DETAIL_LOGS)));
        if (!current() || detail.id !== id) return;
        renderLogs(tail.logs, tail.total, false);
        detail.logCount = tail.after + tail.logs.length;
      }
    } catch (err) {
      // Keep what is shown (a deleted job, a lost connection); the stats line says offline.
    } finally {
      if (detail.loading === id) detail.loading = null;
    }
  }

  function closeDetail() {
    state.selected = null;
    detail.id = null;
    detail.key = null;
    $("#detail").hidden = true;
  }

  // -- the refresh loop --------------------------------------------------------------------
  function jobsQuery() {
    if (state.deadLetters) return "/api/dlq?limit=100";
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

  // One refresh at a time. One asked for meanwhile (a filter changed, a job cancelled) is
  // not dropped: the refresh in flight returns true, and the next comes at once.
  async function refresh() {
    if (state.inFlight) {
      state.again = true;
      return false;
    }
    state.inFlight = true;
    state.again = false;
    try {
      const deadLetters = state.deadLetters;   // what this answer is, whatever a click changes meanwhile
      const asked = jobsQuery();
      const [stats, jobs] = await Promise.all([request("GET", "/api/stats"), request("GET", asked)]);
      renderStats(stats);
      if (asked === jobsQuery()) {
        renderJobs(jobs.jobs, deadLetters);
      } else {
        state.again = true;   // the filters changed meanwhile: this table is not theirs
      }
      setConnection("live · updated " + new Date().toLocaleTimeString(), true);
    } catch (err) {
      setConnection("offline: " + err.message, false);
    } finally {
      state.inFlight = false;
    }
    return state.again;
  }

  function schedule(delay) {
    window.clearTimeout(state.timer);
    state.timer = window.setTimeout(async () => {
      let again = false;
      if (!document.hidden) {
        refreshDetail();   // not awaited: a slow detail never holds up the table
        again = await refresh();
      }
      // A callback whose refresh was in flight ends after any other started meanwhile, so
      // its choice stands.
      schedule(again ? 0 : refreshMs);
    }, delay);
  }

  // Shows `text`, and under it the jobs a "Retry all failed" could not re-queue, each with
  // why (the `skipped` of POST /api/dlq/retry); its id opens the job's detail.
  function flash(text, skipped) {
    setText($("#flash-text"), text);
    $("#flash-skipped").replaceChildren(...(skipped || []).map((entry) => {
      const item = el("li", "skipped-job");
      item.dataset.jobId = entry.id;
      const idButton = el("button", "link job-id", entry.id.slice(0, 8));
      idButton.type = "button";
      idButton.title = entry.id;
      item.append(idButton, (entry.name ? " (" + entry.name + ")" : "") + ": " + entry.reason);
      return item;
    }));
    $("#flash").hidden = !text;
  }

  // -- user actions ------------------------------------------------------------------------
  async function act(action, id) {
    try {
      if (action === "show") {
        state.selected = id;
        detail.id = null;   // fetch it whole, even if it is the one on show
        await refreshDetail();
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
    state.deadLetters = false;
    $("#dlq-show").setAttribute("aria-pressed", "false");
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
      closeDetail();
      schedule(0);
    });
    $("#dlq-show").addEventListener("click", () => {
      select.value = "failed";
      $("#filter-owner").value = "";
      $("#filter-tag").value = "";
      readFilters();
      state.deadLetters = true;   // by failure time: /api/dlq, not /api/jobs?status=failed
      $("#dlq-show").setAttribute("aria-pressed", "true");
    });
    $("#flash-skipped").addEventListener("click", (event) => {
      const item = event.target.closest("button.job-id") && event.target.closest("li[data-job-id]");
      if (item) act("show", item.dataset.jobId);
    });
    $("#dlq-retry").addEventListener("click", async () => {
      if (!window.confirm("Re-queue every failed job?")) return;
      try {
        const reply = await request("POST", "/api/dlq/retry");
        const skipped = reply.skipped || [];
        flash("re-queued " + reply.count + " failed job(s)"
              + (skipped.length ? "; not re-queued, " + skipped.length + ":" : ""), skipped);
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

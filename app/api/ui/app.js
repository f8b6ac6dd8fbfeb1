// The live jobs page: one collection watch (Server-Sent Events) keeps a local copy of the
// sessions that match the filters; a selected session's document follows its job watch.
// How the streams behave in a browser: docs/browsers.md. No framework, no build step.
"use strict";

const MAX_ROWS = 500; // rows drawn; the count says how many match
const LIVE_AFTER_MS = 300; // a resumed stream that is not refused at once is live

const page = {
  token: "",
  source: null, // the collection's EventSource
  sessions: new Map(), // job_id -> summary: what the page shows
  initial: null, // while an initial state arrives: the new copy, swapped in at its end
  lastId: "", // the last SSE id the browser holds (it sends it back as Last-Event-ID)
  resetting: false, // the server said the revision is gone: the next initial state is a resync
  changed: new Set(), // job ids changed since the last draw (highlighted)
  drawPending: false,
  liveTimer: 0,
  retryTimer: 0,
  job: null, // {id, source, lastId, document, etag, deleted}
};

const $ = (id) => document.getElementById(id);

// --- addresses ------------------------------------------------------------------------------

function address(path, params) {
  const query = new URLSearchParams(params);
  // An EventSource cannot send Authorization: the token goes as RFC 6750's access_token.
  if (page.token) query.set("access_token", page.token);
  const text = query.toString();
  return text ? `${path}?${text}` : path;
}

function jobPath(jobId) {
  return "api/v2/jobs/" + encodeURIComponent(jobId);
}

// The filters and the selected job live in the fragment: a link shows the same view.
function readFragment() {
  const fragment = new URLSearchParams(location.hash.slice(1));
  const token = fragment.get("access_token");
  if (token !== null) {
    // A token in a link: keep it for this tab, and take it out of the address bar and history.
    sessionStorage.setItem("sessions-token", token);
    fragment.delete("access_token");
    history.replaceState(null, "", fragment.toString() ? "#" + fragment : location.pathname + location.search);
  }
  page.token = sessionStorage.getItem("sessions-token") || "";
  $("status").value = fragment.get("status") || "";
  $("user").value = fragment.get("user") || "";
  $("unfinished").checked = fragment.get("unfinished") === "1";
  return fragment.get("job");
}

function writeFragment() {
  const fragment = new URLSearchParams();
  if ($("status").value) fragment.set("status", $("status").value);
  if ($("user").value.trim()) fragment.set("user", $("user").value.trim());
  if ($("unfinished").checked) fragment.set("unfinished", "1");
  if (page.job) fragment.set("job", page.job.id);
  const text = fragment.toString();
  history.replaceState(null, "", text ? "#" + text : location.pathname + location.search);
}

// --- the connection's state -----------------------------------------------------------------

const LABELS = {
  connecting: "connecting",
  live: "live",
  resynced: "live · resynced",
  reconnecting: "reconnecting",
  unavailable: "reconnecting · service unavailable",
  unauthorized: "token needed",
  closed: "disconnected",
};

function showState(element, state, detail) {
  element.dataset.state = state;
  element.textContent = LABELS[state] + (detail ? ` · ${detail}` : "");
}

function setState(state, detail) {
  clearTimeout(page.liveTimer);
  showState($("state"), state, detail);
  $("token-box").hidden = !(state === "unauthorized" || page.token);
}

// --- the collection watch -------------------------------------------------------------------

function connect() {
  disconnect();
  page.lastId = "";
  page.initial = null;
  const params = { watch: "true" };
  if ($("status").value) params.status = $("status").value;
  if ($("user").value.trim()) params.user_id = $("user").value.trim();
  if ($("unfinished").checked) params.include_saved = "false";
  const source = new EventSource(address("api/v2/jobs", params));
  page.source = source;
  setState("connecting");
  const mine = (handler) => (event) => {
    if (page.source === source) handler(event);
  };
  source.addEventListener("open", mine(opened));
  for (const type of ["ADDED", "MODIFIED", "DELETED"]) source.addEventListener(type, mine(changed));
  source.addEventListener("BOOKMARK", mine(bookmark));
  source.addEventListener("ERROR", mine(refused));
  source.addEventListener("error", mine(() => failed(source)));
}

function disconnect() {
  clearTimeout(page.retryTimer);
  clearTimeout(page.liveTimer);
  if (page.source) page.source.close();
  page.source = null;
}

function opened() {
  if (!page.lastId) {
    // Opened without an id: the server sends the whole state, then a bookmark that ends it.
    page.initial = new Map();
    return;
  }
  // Resumed from the last id: live, unless the server answers with an ERROR at once (a 503
  // or an expired revision is a stream that says so and ends).
  page.liveTimer = setTimeout(() => setState("live"), LIVE_AFTER_MS);
}

function changed(event) {
  const data = JSON.parse(event.data);
  const target = page.initial || page.sessions;
  if (data.type === "DELETED") target.delete(data.object.job_id);
  else target.set(data.object.job_id, data.object);
  if (event.lastEventId) page.lastId = event.lastEventId;
  if (!page.initial) {
    page.changed.add(data.object.job_id);
    draw();
  }
}

function bookmark(event) {
  const data = JSON.parse(event.data);
  page.lastId = event.lastEventId || page.lastId;
  if (data.initial_events_end && page.initial) {
    page.sessions = page.initial;
    page.initial = null;
    setState(page.resetting ? "resynced" : "live");
    page.resetting = false;
    draw();
  }
}

function refused(event) {
  const problem = JSON.parse(event.data).object || {};
  if (problem.status === 410) {
    // The revision is gone (a restart, another replica, too old): the browser has cleared its
    // last id and reconnects without one; the initial state it gets replaces the copy.
    page.lastId = "";
    page.resetting = true;
    setState("reconnecting", "resync");
  } else {
    setState("unavailable", problem.title || String(problem.status));
  }
}

async function failed(source) {
  page.initial = null; // an initial state cut short is sent again whole
  if (source.readyState === EventSource.CONNECTING) {
    // The browser reconnects by itself, after the stream's `retry:`.
    if ($("state").dataset.state !== "unavailable") setState("reconnecting");
    return;
  }
  // Closed for good: a status that is not 200. An EventSource does not say which; ask.
  let status = 0;
  try {
    status = (await fetch(address("api/v2/jobs", { limit: "1" }), { method: "HEAD" })).status;
  } catch (error) {
    status = 0;
  }
  if (page.source !== source) return;
  if (status === 401) {
    setState("unauthorized");
    $("token").focus();
    return;
  }
  setState("closed", status ? `HTTP ${status}` : "no answer");
  page.retryTimer = setTimeout(connect, 5000);
}

// --- drawing --------------------------------------------------------------------------------

function instant(value) {
  const parsed = typeof value === "string" ? Date.parse(value) : NaN;
  return Number.isNaN(parsed) ? -Infinity : parsed;
}

function newestFirst(a, b) {
  const order = instant(b.updated_at) - instant(a.updated_at);
  if (order) return order;
  return a.job_id < b.job_id ? -1 : a.job_id > b.job_id ? 1 : 0;
}

function draw() {
  if (page.drawPending) return;
  page.drawPending = true;
  requestAnimationFrame(drawNow);
}

function cell(text, className) {
  const td = document.createElement("td");
  td.textContent = text === null || text === undefined ? "—" : String(text);
  if (className) td.className = className;
  return td;
}

function drawNow() {
  page.drawPending = false;
  const summaries = Array.from(page.sessions.values()).sort(newestFirst);
  const rows = document.createDocumentFragment();
  for (const summary of summaries.slice(0, MAX_ROWS)) {
    const row = document.createElement("tr");
    row.dataset.job = summary.job_id;
    if (page.changed.has(summary.job_id)) row.className = "changed";
    if (page.job && page.job.id === summary.job_id) row.classList.add("selected");
    row.append(cell(summary.job_id, "job"));
    const status = cell(summary.status);
    status.dataset.status = summary.status || "";
    status.classList.add("status");
    row.append(status, cell(summary.user_id), cell(summary.updated_at, "time"), cell(summary.created_at, "time"));
    rows.append(row);
  }
  $("rows").replaceChildren(rows);
  page.changed.clear();
  const count = summaries.length;
  $("count").textContent = `${count} session${count === 1 ? "" : "s"}`;
  $("more").hidden = count <= MAX_ROWS;
  $("more").textContent = `The newest ${MAX_ROWS} of ${count} are shown: filter to see the others.`;
  $("empty").hidden = count > 0 || page.initial !== null;
}

// --- one session, followed --------------------------------------------------------------------

function select(jobId) {
  closeJob();
  if (!jobId) {
    writeFragment();
    draw();
    return;
  }
  const source = new EventSource(address(jobPath(jobId), { watch: "true" }));
  const job = { id: jobId, source, document: null, etag: null, deleted: false };
  page.job = job;
  $("detail").hidden = false;
  $("detail-title").textContent = jobId;
  $("document").textContent = "";
  $("detail-meta").textContent = "waiting for the session's file…";
  showState($("detail-state"), "connecting");
  const mine = (handler) => (event) => {
    if (page.job === job) handler(event);
  };
  source.addEventListener("open", mine(() => showState($("detail-state"), "live")));
  for (const type of ["ADDED", "MODIFIED", "DELETED"]) {
    source.addEventListener(
      type,
      mine((event) => showVersion(job, JSON.parse(event.data))),
    );
  }
  source.addEventListener(
    "ERROR",
    mine((event) => {
      const problem = JSON.parse(event.data).object || {};
      showState($("detail-state"), "unavailable", problem.title || String(problem.status));
    }),
  );
  source.addEventListener(
    "error",
    mine(() => {
      const closedForGood = source.readyState === EventSource.CLOSED;
      showState($("detail-state"), closedForGood ? "closed" : "reconnecting");
    }),
  );
  writeFragment();
  draw();
}

function showVersion(job, event) {
  job.deleted = event.type === "DELETED";
  if (event.object) job.document = event.object;
  job.etag = event.etag;
  $("detail").classList.toggle("deleted", job.deleted);
  $("detail-meta").textContent = job.deleted
    ? "deleted: its file is gone (shown: its last version)"
    : `${event.type === "ADDED" ? "version" : "new version"} ${event.etag}`;
  $("document").textContent = job.document === null ? "" : JSON.stringify(job.document, null, 2);
}

function closeJob() {
  if (page.job) page.job.source.close();
  page.job = null;
  $("detail").hidden = true;
}

// --- start ----------------------------------------------------------------------------------

function start() {
  const jobId = readFragment();
  let typing = 0;
  $("status").addEventListener("change", () => (writeFragment(), connect()));
  $("unfinished").addEventListener("change", () => (writeFragment(), connect()));
  $("user").addEventListener("input", () => {
    clearTimeout(typing);
    typing = setTimeout(() => (writeFragment(), connect()), 300);
  });
  $("filters").addEventListener("submit", (event) => event.preventDefault());
  $("token-save").addEventListener("click", () => {
    page.token = $("token").value.trim();
    if (page.token) sessionStorage.setItem("sessions-token", page.token);
    else sessionStorage.removeItem("sessions-token");
    $("token").value = "";
    connect();
    if (page.job) select(page.job.id);
  });
  $("rows").addEventListener("click", (event) => {
    const row = event.target.closest("tr[data-job]");
    if (row) select(row.dataset.job);
  });
  $("detail-close").addEventListener("click", () => select(null));
  connect();
  if (jobId) select(jobId);
}

start();

// Routa sessions dashboard: plain JS, no build step, no network beyond this origin.
// All data is put on the page with textContent / attributes, never innerHTML.
"use strict";

const RETRY_MS = 3000;

const state = {
  token: null,            // bearer token when auth is on (?token=… or localStorage)
  shared: false,          // read-only view of one session at /s/<share token>
  workspaceId: "default",
  sessions: new Map(),    // sessionId → session (wire shape)
  listSource: null,       // EventSource of /api/sessions/events
  selectedId: null,
  stream: null,           // EventSource of /api/acp?sessionId=…
  streamRetry: null,      // timer id of a pending re-open
  lastEventId: 0,
  lastItem: null,         // last conversation item, to join agent chunks
  toolCalls: new Map(),   // toolCallId → {data, node}
  queued: new Map(),      // queuedPromptId → its marker, while the prompt waits its turn
  planNode: null,         // the plan card of the current turn (updated in place)
  eventNodes: new Map(),  // eventId → the conversation item that shows it (search hits jump there)
  pendingJump: null,      // eventId to scroll to once the replay has shown it
  promptsRunning: 0,      // prompts this page sent that have not answered yet
  turnOpen: false,        // the stream shows a turn that has not ended (whoever started it)
  search: null,           // {q, next} of the results shown
  rpcId: 0,
  sideTimer: null,        // debounced notes/tasks refresh
  sideSeq: 0,             // number of the latest notes/tasks read
  sideDeferred: false,    // a refresh left a list alone for its open form: read again when it closes
  configTimer: null,      // debounced config options read
  configSeq: 0,           // number of the latest config options read (or change)
};

// ---------- small DOM helpers ----------

const $ = (id) => document.getElementById(id);

/** Create an element; attrs go through setAttribute/properties, children become text nodes. */
function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (value === undefined || value === null || value === false) continue;
    if (key === "class") node.className = value;
    else if (key === "testid") node.dataset.testid = value;
    else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else node.setAttribute(key, value === true ? "" : String(value));
  }
  appendChildren(node, children);
  return node;
}

function appendChildren(node, children) {
  for (const child of children.flat()) {
    if (child === undefined || child === null || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
}

function pill(text, testid) {
  return el("span", { class: `pill ${text || ""}`, testid }, text || "—");
}

function setPill(node, text) {
  node.textContent = text;
  node.className = `pill ${text}`;
}

function formatTime(iso) {
  if (!iso) return "";
  const date = new Date(iso);
  if (Number.isNaN(date.getTime())) return iso;
  const sameDay = date.toDateString() === new Date().toDateString();
  return sameDay ? date.toLocaleTimeString() : date.toLocaleString();
}

function showError(message) {
  $("error-text").textContent = message;
  $("error-banner").hidden = false;
}

function clearError() {
  $("error-banner").hidden = true;
  $("error-text").textContent = "";
}

// ---------- HTTP, JSON-RPC and streams ----------

function authHeaders() {
  return state.token ? { Authorization: `Bearer ${state.token}` } : {};
}

/** A URL on this origin with query params (and access_token for EventSource when auth is on). */
function apiUrl(path, params = {}, forEventSource = false) {
  const url = new URL(path, window.location.origin);
  for (const [key, value] of Object.entries(params)) {
    if (value !== undefined && value !== null) url.searchParams.set(key, value);
  }
  if (forEventSource && state.token) url.searchParams.set("access_token", state.token);
  return url.pathname + url.search;
}

async function getJson(path, params) {
  const res = await fetch(apiUrl(path, params), { headers: authHeaders() });
  const body = await res.json().catch(() => ({}));
  if (!res.ok) throw new Error(body.error || `${path}: HTTP ${res.status}`);
  return body;
}

/** POST/PATCH a JSON body to a REST route; the route's {"error"} becomes the thrown message. */
async function sendJson(method, path, payload) {
  const res = await fetch(apiUrl(path), {
    method,
    headers: { "Content-Type": "application/json", ...authHeaders() },
    body: JSON.stringify(payload),
  });
  const body = await res.json().catch(() => ({}));
  if (!res.ok) throw new Error(body.error || `${method} ${path}: HTTP ${res.status}`);
  return body;
}

/** One readable line: the agent's own message is added only when the error does not already say it. */
function rpcErrorText(method, error) {
  const message = String(error.message || "request failed");
  const agent = error.data && error.data.agentError;
  const agentMessage = agent && agent.message ? String(agent.message) : "";
  const detail = agentMessage && !message.includes(agentMessage) ? ` (agent: ${agentMessage})` : "";
  const prefix = message.includes(method) ? "" : `${method} failed: `;
  return `${prefix}${message}${detail}`;
}

class RpcError extends Error {
  constructor(method, error) {
    super(rpcErrorText(method, error));
    this.code = error.code;
  }
}

/** POST /api/acp with one JSON-RPC request; resolves to `result`, rejects with the `error`. */
async function rpc(method, params) {
  const request = { jsonrpc: "2.0", id: ++state.rpcId, method, params: params || {} };
  const res = await fetch("/api/acp", {
    method: "POST",
    headers: { "Content-Type": "application/json", ...authHeaders() },
    body: JSON.stringify(request),
  });
  const body = await res.json().catch(() => ({}));
  if (!res.ok) throw new Error(`${method}: ${body.error || `HTTP ${res.status}`}`);
  if (body.error) throw new RpcError(method, body.error);
  return body.result;
}

/** Run an async action; show its failure in the banner instead of throwing. */
async function attempt(action) {
  try {
    return await action();
  } catch (err) {
    showError(err.message || String(err));
    return undefined;
  }
}

// ---------- workspaces and providers ----------

async function loadWorkspaces() {
  const { workspaces } = await getJson("/api/workspaces");
  const select = $("workspace-select");
  select.replaceChildren();
  const ids = workspaces.map((ws) => ws.id);
  if (!ids.includes(state.workspaceId)) {
    state.workspaceId = ids.includes("default") ? "default" : ids[0] || "default";
  }
  for (const ws of workspaces) {
    const label = ws.title && ws.title !== ws.id ? `${ws.title} (${ws.id})` : ws.id;
    select.append(el("option", { value: ws.id, selected: ws.id === state.workspaceId }, label));
  }
}

async function loadProviders() {
  const { providers } = await rpc("_providers/list", {});
  const select = $("provider-select");
  select.replaceChildren();
  for (const p of providers) {
    const label = p.status === "available" ? p.name || p.id : `${p.name || p.id} (unavailable)`;
    select.append(el("option", { value: p.id, title: p.description, disabled: p.status !== "available" }, label));
  }
  const firstAvailable = providers.find((p) => p.status === "available");
  if (firstAvailable) select.value = firstAvailable.id;
}

// ---------- session list (REST + lifecycle SSE) ----------

async function reloadSessions() {
  const { sessions } = await getJson("/api/sessions", { workspaceId: state.workspaceId });
  state.sessions = new Map(sessions.map((s) => [s.sessionId, s]));
  renderSessionList();
}

function openSessionList() {
  if (state.listSource) state.listSource.close();
  const source = new EventSource(apiUrl("/api/sessions/events", { workspaceId: state.workspaceId }, true));
  state.listSource = source;
  setPill($("list-status"), "connecting");
  // every (re)connect: no replay on this stream, so re-read the list
  source.onopen = () => {
    setPill($("list-status"), "live");
    attempt(reloadSessions);
  };
  source.onerror = () => setPill($("list-status"), source.readyState === EventSource.CLOSED ? "offline" : "connecting");
  source.onmessage = (msg) => applyLifecycle(JSON.parse(msg.data));
}

function applyLifecycle(message) {
  if (message.workspaceId && message.workspaceId !== state.workspaceId) return;
  const current = state.sessions.get(message.sessionId);
  if (message.type === "session:created") {
    state.sessions.set(message.sessionId, { ...(current || {}), ...message.changes });
  } else if (message.type === "session:updated") {
    if (!current) return void attempt(reloadSessions);
    state.sessions.set(message.sessionId, { ...current, ...message.changes });
    const changes = message.changes || {};
    if (message.sessionId === state.selectedId && ("model" in changes || "modeId" in changes)) {
      scheduleConfigOptions(); // e.g. set_config_option sent by another client
    }
  } else if (message.type === "session:deleted") {
    state.sessions.delete(message.sessionId);
    if (message.sessionId === state.selectedId) closeSession();
  } else {
    return; // connected frame, or a message kind this page does not know
  }
  renderSessionList();
}

function sortedSessions() {
  return [...state.sessions.values()].sort((a, b) => String(b.createdAt).localeCompare(String(a.createdAt)));
}

function renderSessionList() {
  const list = $("session-list");
  list.replaceChildren(...sortedSessions().map(sessionItem));
  $("session-empty").hidden = state.sessions.size > 0;
  renderSessionHeader();
}

function sessionItem(s) {
  return el(
    "li",
    {
      class: `session-item${s.sessionId === state.selectedId ? " selected" : ""}`,
      testid: "session-item",
      "data-session-id": s.sessionId,
      title: s.sessionId,
      onclick: () => selectSession(s.sessionId),
    },
    el("div", { class: "row" },
      el("span", { class: "name", testid: "session-name" }, s.name || s.sessionId.slice(0, 8)),
      pill(s.status, "session-status")),
    el("div", { class: "row small muted" },
      el("span", { testid: "session-provider" }, s.provider || ""),
      el("span", {}, "agent ", pill(s.acpStatus, "session-acp-status"))),
    el("div", { class: "small muted", testid: "session-last-activity" }, formatTime(s.lastActivity)),
  );
}

async function createSession(event) {
  event.preventDefault();
  const name = $("new-session-name").value.trim();
  const provider = $("provider-select").value;
  const params = { workspaceId: state.workspaceId };
  if (name) params.name = name;
  if (provider) params.provider = provider;
  const result = await attempt(() => rpc("session/new", params));
  if (!result) return;
  $("new-session-name").value = "";
  // the lifecycle stream brings the row too; this makes it visible at once (read-your-writes)
  await attempt(reloadSessions);
  selectSession(result.sessionId);
}

// ---------- the selected session ----------

function renderSessionHeader() {
  const s = state.sessions.get(state.selectedId);
  if (!s) return;
  $("session-title").textContent = s.name || "Untitled session";
  $("session-id").textContent = s.sessionId;
  $("session-meta").textContent = [s.provider, `status ${s.status}`, `agent ${s.acpStatus}`]
    .filter(Boolean).join(" · ");
  setMode(s.modeId);
}

function setMode(modeId) {
  if (!modeId) return;
  const select = $("mode-select");
  if (![...select.options].some((o) => o.value === modeId)) select.append(el("option", { value: modeId }, modeId));
  select.value = modeId;
}

function selectSession(sessionId) {
  if (sessionId === state.selectedId && state.stream) return;
  closeSession();
  state.selectedId = sessionId;
  $("no-session").hidden = true;
  $("session-view").hidden = false;
  updateExportLinks();
  $("new-note").hidden = $("new-task").hidden = false;
  renderSessionList();
  if (state.shared) return void attempt(openStream); // the share token reads nothing else
  history.replaceState(null, "", `#${new URLSearchParams({ ws: state.workspaceId, session: sessionId })}`);
  attempt(openStream);
  attempt(loadSidePanel);
  attempt(loadConfigOptions);
}

/** The export links of the selected session (a plain download; the token rides along as for EventSource). */
function updateExportLinks() {
  for (const link of document.querySelectorAll("#export-menu a[data-format]")) {
    if (!state.selectedId) {
      link.removeAttribute("href");
      continue;
    }
    link.href = apiUrl(`/api/sessions/${encodeURIComponent(state.selectedId)}/export`,
      { format: link.dataset.format }, true);
  }
}

function closeSession() {
  if (state.stream) state.stream.close();
  clearTimeout(state.streamRetry);
  clearTimeout(state.configTimer);
  Object.assign(state, {
    stream: null, streamRetry: null, selectedId: null, lastEventId: 0, lastItem: null,
    planNode: null, pendingJump: null, promptsRunning: 0, turnOpen: false, sideDeferred: false,
    configTimer: null, configSeq: state.configSeq + 1,
  });
  state.toolCalls.clear();
  state.queued.clear();
  renderQueue();
  state.eventNodes.clear();
  $("conversation").replaceChildren();
  $("share-url").hidden = true;
  $("export-menu").open = false;
  updateTurnControls();
  $("session-view").hidden = true;
  $("no-session").hidden = false;
  $("notes").replaceChildren();
  $("tasks").replaceChildren();
  $("note-form-slot").replaceChildren();
  $("task-form-slot").replaceChildren();
  $("config-options").replaceChildren();
  $("new-note").hidden = $("new-task").hidden = true; // a note or task is written for the open session
}

/** Probe (EventSource cannot read error bodies), then stream from after the last seen event. */
async function openStream() {
  const sessionId = state.selectedId;
  setPill($("stream-status"), "connecting");
  const probe = await fetch(apiUrl("/api/acp", { sessionId, probe: "1" }), { headers: authHeaders() });
  if (sessionId !== state.selectedId) return;
  if (probe.status !== 204) {
    const body = await probe.json().catch(() => ({}));
    setPill($("stream-status"), "error");
    showError(body.error || `event stream: HTTP ${probe.status}`);
    return;
  }
  // lastEventId=0 replays the whole log at first; EventSource's Last-Event-ID header wins on reconnect
  const source = new EventSource(apiUrl("/api/acp", { sessionId, lastEventId: String(state.lastEventId) }, true));
  state.stream = source;
  source.onmessage = (msg) => {
    if (source === state.stream) handleFrame(JSON.parse(msg.data));
  };
  source.onerror = () => {
    if (source !== state.stream) return;
    if (source.readyState === EventSource.CLOSED) {
      // the server refused a reconnect: probe again later, from the last event we saw
      setPill($("stream-status"), "offline");
      state.stream = null;
      state.streamRetry = setTimeout(() => sessionId === state.selectedId && attempt(openStream), RETRY_MS);
    } else {
      setPill($("stream-status"), "connecting");
    }
  };
}

function handleFrame(frame) {
  const event = frame.params || {};
  if (event.eventId === undefined) {
    setPill($("stream-status"), "live"); // the connected frame carries no eventId
    return;
  }
  const eventId = Number(event.eventId);
  if (eventId <= state.lastEventId) return; // already shown (replay overlap)
  state.lastEventId = eventId;
  renderEvent(event);
  // no lifecycle stream for a share link: re-read the header when the session changes
  if (state.shared && SHARED_REFRESH.has((event.update || {}).sessionUpdate)) attempt(loadSharedSession);
}

const SHARED_REFRESH = new Set(["turn_complete", "error", "acp_status", "session_renamed", "current_mode_update"]);

// ---------- rendering events ----------

const RENDERERS = {
  user_message: (u) => {
    if (u.queuedPromptId) leaveQueue(u.queuedPromptId, "started");
    startTurn(contentText(u.content));
  },
  prompt_queued: (u) => addQueued(u),
  prompt_dropped: (u) => leaveQueue(u.queuedPromptId, "dropped"),
  user_message_chunk: (u) => addUserMessage(contentText(u.content)),
  agent_message_chunk: (u) => addAgentChunk(u),
  agent_thought_chunk: (u) => addThoughtChunk(u),
  tool_call: (u) => upsertToolCall(u),
  tool_call_update: (u) => upsertToolCall(u),
  plan: (u) => renderPlan(u.entries || []),
  turn_complete: (u) => {
    endTurn();
    addMarker(`turn complete: ${u.stopReason || "?"}`, "turn-complete");
    scheduleSidePanel(); // an agent may have written notes or tasks during the turn
  },
  error: (u) => {
    endTurn();
    addMarker(`error: ${u.message || "turn failed"}`, "turn-error", "error");
  },
  acp_status: (u) => {
    addAcpStatus(u);
    scheduleConfigOptions(); // a (re)started agent reports its options again
  },
  current_mode_update: (u) => {
    setMode(u.currentModeId || u.modeId);
    addMarker(`mode: ${u.currentModeId || u.modeId}`, "mode-changed");
  },
  session_renamed: (u) => addMarker(`renamed to “${u.name}”`, "renamed"),
  process_output: () => {}, // stderr of the agent: too noisy for the conversation
  terminal_output: (u) => addTerminalOutput(u),
  available_commands_update: () => {},
  config_option_update: () => scheduleConfigOptions(),
  usage_update: () => {},
  session_info_update: () => {},
};

function renderEvent(event) {
  const update = event.update || {};
  const render = RENDERERS[update.sessionUpdate];
  if (render) render(update);
  else addUnknownEvent(update);
  const eventId = Number(event.eventId);
  if (state.lastItem) state.eventNodes.set(eventId, state.lastItem.node);
  if (state.pendingJump !== null && eventId >= state.pendingJump) jumpToEvent(state.pendingJump);
  else if (state.pendingJump === null) scrollToEnd();
}

/** A kind this page does not know: one compact line; the full update folded under it. */
function addUnknownEvent(update) {
  const kind = String(update.sessionUpdate || "event");
  const fields = Object.keys(update).filter((key) => key !== "sessionUpdate");
  const summary = fields.length ? `${kind} (${fields.slice(0, 4).join(", ")}${fields.length > 4 ? ", …" : ""})` : kind;
  addItem(el("details", { class: "unknown", testid: "unknown-event" },
    el("summary", {}, summary),
    el("pre", { class: "raw" }, JSON.stringify(update, null, 2))), "unknown");
}

function startTurn(text) {
  state.turnOpen = true;
  state.planNode = null; // a new turn's plan gets its own card
  updateTurnControls();
  addUserMessage(text);
}

function endTurn() {
  state.turnOpen = false;
  updateTurnControls();
}

/** Scroll a search hit's event into view and mark it for a moment. */
function jumpToEvent(eventId) {
  let node = state.eventNodes.get(eventId);
  if (!node) {
    // a joined chunk: the item of the nearest earlier event that is still on the page
    const earlier = [...state.eventNodes.keys()].filter((id) => id <= eventId).sort((a, b) => b - a);
    node = earlier.length ? state.eventNodes.get(earlier[0]) : null;
  }
  if (!node || !node.isConnected) return;
  state.pendingJump = null;
  node.scrollIntoView({ block: "center" });
  for (const old of document.querySelectorAll(".conversation .found")) old.classList.remove("found");
  node.classList.add("found");
  node.dataset.found = "true";
}

function contentText(content) {
  if (!content) return "";
  if (Array.isArray(content)) return content.map(contentText).join("");
  if (content.type === "text") return content.text || "";
  if (content.type === "content") return contentText(content.content);
  if (content.type === "resource_link") return `[${content.name || content.uri}]`;
  return `[${content.type || "content"}]`;
}

/** Append a conversation item; `kind`/`key` let the next chunk decide whether to join it. */
function addItem(node, kind, key) {
  $("conversation").append(node);
  state.lastItem = { kind, key, node };
  return node;
}

function scrollToEnd() {
  const box = $("conversation");
  box.scrollTop = box.scrollHeight;
}

function addUserMessage(text) {
  addItem(el("div", { class: "bubble user", testid: "user-message" }, text), "user");
}

function joinable(kind, key) {
  return state.lastItem && state.lastItem.kind === kind && state.lastItem.key === key;
}

function addAgentChunk(update) {
  const key = update.messageId || "";
  const text = contentText(update.content);
  if (joinable("agent", key)) {
    state.lastItem.node.append(document.createTextNode(text));
    return;
  }
  addItem(el("div", { class: "bubble agent", testid: "agent-message", "data-message-id": key || undefined }, text),
    "agent", key);
}

function addThoughtChunk(update) {
  const key = update.messageId || "";
  const text = contentText(update.content);
  if (joinable("thought", key)) {
    state.lastItem.node.querySelector(".text").append(document.createTextNode(text));
    return;
  }
  addItem(el("details", { class: "thought", testid: "thought" },
    el("summary", {}, "thinking"), el("span", { class: "text" }, text)), "thought", key);
}

/** A command the agent ran in a client terminal: one block per run of its output. */
function addTerminalOutput(update) {
  const last = state.lastItem;
  if (last && last.kind === "terminal" && last.key === update.terminalId) {
    last.node.append(update.data || "");
    return;
  }
  addItem(el("pre", { class: "raw", testid: "terminal-output" }, update.data || ""), "terminal", update.terminalId);
}

// ---------- queued prompts (sent while a turn runs: ifBusy "enqueue") ----------

function addQueued(update) {
  const id = update.queuedPromptId;
  const drop = state.shared ? null : el("button", {
    type: "button", class: "link", testid: "drop-queued", title: "Remove this prompt from the queue",
    onclick: () => attempt(() => rpc("session/cancel", { sessionId: state.selectedId, queuedPromptId: id })),
  }, "Drop");
  const node = el("div", { class: "marker queued", testid: "prompt-queued", "data-queued-id": id },
    `prompt queued (position ${update.position}) `, drop);
  // beside the conversation, not in it: the running agent message keeps joining its bubble
  $("conversation").append(node);
  state.queued.set(id, node);
  renderQueue();
}

function leaveQueue(id, how) {
  const node = state.queued.get(id);
  if (!node) return;
  state.queued.delete(id);
  node.querySelector("button")?.remove();
  node.classList.add(how);
  node.append(how === "dropped" ? "· dropped" : "· started");
  renderQueue();
}

function renderQueue() {
  const status = $("queue-status");
  status.hidden = state.queued.size === 0;
  status.textContent = `${state.queued.size} queued`;
}

function addMarker(text, testid, extraClass = "") {
  addItem(el("div", { class: `marker ${extraClass}`, testid }, text), "marker");
}

function addAcpStatus(update) {
  const detail = update.error ? `: ${update.error}` : "";
  addMarker(`agent ${update.status}${detail}`, "acp-status", update.status === "error" ? "error" : "");
}

// ---------- tool calls and permission prompts ----------

/** tool_call creates a card (or refreshes it); tool_call_update patches the fields it carries. */
function upsertToolCall(update) {
  const id = update.toolCallId;
  const known = state.toolCalls.get(id);
  const data = { ...(known ? known.data : {}), ...update };
  delete data.sessionUpdate;
  if (known) {
    const node = toolCallNode(data);
    known.node.replaceWith(node);
    state.toolCalls.set(id, { data, node });
    if (state.lastItem && state.lastItem.node === known.node) state.lastItem.node = node;
  } else {
    const node = addItem(toolCallNode(data), "tool", id);
    state.toolCalls.set(id, { data, node });
  }
}

function toolCallNode(data) {
  const status = data.status || "pending";
  const card = el("div", { class: `tool ${status}`, testid: "tool-call", "data-tool-call-id": data.toolCallId },
    el("div", { class: "row" },
      el("span", { class: "title", testid: "tool-title" }, data.title || data.kind || "tool call"),
      el("span", { class: "small muted" }, data.kind || ""),
      pill(status, "tool-status")));
  const locations = data.locations || [];
  if (locations.length) {
    card.append(el("ul", { testid: "tool-locations" },
      locations.map((loc) => el("li", {}, loc.line ? `${loc.path}:${loc.line}` : loc.path))));
  }
  const text = contentText(data.content);
  if (text) card.append(el("pre", { testid: "tool-content" }, text));
  const outcome = data._meta && data._meta.permission;
  if (outcome) card.append(permissionOutcome(data, outcome));
  if (status === "waiting" && Array.isArray(data.options)) card.append(permissionButtons(data));
  return card;
}

/** What the permission prompt was answered with, by the option's kind (allow_* / reject_*). */
function permissionOutcome(data, outcome) {
  const option = (data.options || []).find((o) => o.optionId === outcome.optionId) || {};
  const kind = String(option.kind || outcome.optionId || "");
  const verdict = kind.startsWith("allow") ? "approved" : kind.startsWith("reject") ? "denied" : "answered";
  return el("div", { class: `small permission-outcome ${verdict}`, testid: "permission-outcome" },
    `${verdict}: ${option.name || outcome.optionId || outcome.outcome || ""}`);
}

function permissionButtons(data) {
  const box = el("div", { class: "permission", testid: "permission" }, el("span", { class: "small" }, "Permission:"));
  for (const option of data.options) {
    const allow = String(option.kind || "").startsWith("allow");
    box.append(el("button", {
      type: "button",
      class: allow ? "approve" : "deny",
      testid: allow ? "permission-approve" : "permission-deny",
      "data-option-id": option.optionId,
      onclick: (ev) => respondPermission(data.toolCallId, option.optionId, box, ev.currentTarget),
    }, option.name || option.optionId));
  }
  return box;
}

async function respondPermission(toolCallId, optionId, box, button) {
  for (const b of box.querySelectorAll("button")) b.disabled = true;
  const result = await attempt(() => rpc("session/respond_user_input",
    { sessionId: state.selectedId, toolCallId, response: { optionId } }));
  if (!result) for (const b of box.querySelectorAll("button")) b.disabled = false;
  else button.classList.add("chosen");
}

// ---------- plan ----------

/**
 * A plan is a card in the conversation, where the agent made it: each plan update of the same
 * turn replaces the card's entries, so it scrolls away with the messages instead of covering them.
 */
function renderPlan(entries) {
  const done = entries.filter((e) => e.status === "completed").length;
  const card = el("div", { class: "plan", testid: "plan" },
    el("strong", {}, `Plan · ${done}/${entries.length} done`),
    el("ol", {}, entries.map((e) => el("li", { class: e.status, testid: "plan-entry" },
      `${e.content} `, pill(e.status, "plan-status")))));
  if (state.planNode && state.planNode.isConnected) {
    state.planNode.replaceWith(card);
    if (state.lastItem && state.lastItem.node === state.planNode) state.lastItem.node = card;
    for (const [id, node] of state.eventNodes) if (node === state.planNode) state.eventNodes.set(id, card);
    state.planNode = card;
    state.lastItem = { kind: "plan", key: null, node: card };
  } else {
    state.planNode = addItem(card, "plan");
  }
}

// ---------- prompt, cancel, mode ----------

async function sendPrompt(event) {
  event.preventDefault();
  const input = $("prompt-input");
  const text = input.value.trim();
  if (!text || !state.selectedId) return;
  input.value = "";
  clearError();
  const sessionId = state.selectedId;
  setTurnRunning(+1, sessionId);
  // session/prompt answers when the turn ends; the stream shows progress meanwhile
  try {
    // while a turn runs the prompt waits in the session's queue instead of being refused
    const result = await attempt(() => rpc("session/prompt", { sessionId, prompt: text, ifBusy: "enqueue" }));
    if (result && result.pending) showError("The turn is still running (prompt timeout); its events keep streaming.");
  } finally {
    setTurnRunning(-1, sessionId);
  }
}

function setTurnRunning(delta, sessionId) {
  if (sessionId !== state.selectedId) return; // the page moved on to another session meanwhile
  state.promptsRunning = Math.max(0, state.promptsRunning + delta);
  updateTurnControls();
}

/** Cancel and the running pill only while a turn runs: one this page sent, or one the stream shows. */
function updateTurnControls() {
  const running = state.promptsRunning > 0 || state.turnOpen;
  $("turn-status").hidden = !running;
  $("cancel-button").disabled = !running;
}

async function cancelTurn() {
  if (state.selectedId) await attempt(() => rpc("session/cancel", { sessionId: state.selectedId }));
}

/** A read-only link to the selected session: shown (and copied when the browser allows). */
async function shareSession() {
  const sessionId = state.selectedId;
  if (!sessionId) return;
  const res = await fetch(apiUrl(`/api/sessions/${encodeURIComponent(sessionId)}/shares`), {
    method: "POST",
    headers: { "Content-Type": "application/json", ...authHeaders() },
    body: "{}",
  });
  const body = await res.json().catch(() => ({}));
  if (!res.ok) throw new Error(body.error || `share: HTTP ${res.status}`);
  if (sessionId !== state.selectedId) return;
  const input = $("share-url");
  input.value = body.url;
  input.hidden = false;
  input.select();
  if (navigator.clipboard) navigator.clipboard.writeText(body.url).catch(() => {});
}

async function changeMode() {
  const modeId = $("mode-select").value;
  if (state.selectedId) await attempt(() => rpc("session/set_mode", { sessionId: state.selectedId, modeId }));
}

// ---------- config options (what the agent lets a client set: model, …) ----------

/** The agent's option list as the session last stored it (the context's `configOptions`). */
async function loadConfigOptions() {
  const sessionId = state.selectedId;
  if (!sessionId || state.shared) return; // a share token reads the conversation only
  const seq = ++state.configSeq;
  const context = await getJson(`/api/sessions/${encodeURIComponent(sessionId)}/context`);
  // only the latest read (or change) is shown: an older one answering late would undo it
  if (sessionId !== state.selectedId || seq !== state.configSeq) return;
  renderConfigOptions(context.configOptions);
}

/** Replayed events come in bursts: one read after the burst is enough. */
function scheduleConfigOptions() {
  if (state.shared || !state.selectedId) return;
  clearTimeout(state.configTimer);
  state.configTimer = setTimeout(() => attempt(loadConfigOptions), 300);
}

function renderConfigOptions(options) {
  const list = Array.isArray(options) ? options.filter((o) => o && typeof o.id === "string") : [];
  $("config-options").replaceChildren(...list.map(configControl));
}

/** One labelled control per option: a select, a checkbox for a boolean, else its value as text. */
function configControl(option) {
  const attrs = { testid: "config-option", "data-config-id": option.id, title: option.description };
  let control;
  if (option.type === "boolean") {
    control = el("input", { ...attrs, type: "checkbox", checked: option.currentValue === true });
    control.addEventListener("change", () => setConfigOption(option.id, control.checked, control));
  } else if (Array.isArray(option.options)) {
    control = el("select", attrs, selectChoices(option.options));
    const current = String(option.currentValue ?? "");
    if (![...control.options].some((o) => o.value === current)) control.append(el("option", { value: current }, current));
    control.value = current;
    control.addEventListener("change", () => setConfigOption(option.id, control.value, control));
  } else {
    control = el("span", attrs, String(option.currentValue ?? "—"));
  }
  return el("label", { class: "field", testid: "config-field" }, String(option.name || option.id), control);
}

/** A select's choices: plain values, or groups of them (`{group, name, options}`). */
function selectChoices(choices) {
  return choices.filter(Boolean).map((c) => (Array.isArray(c.options)
    ? el("optgroup", { label: c.name || c.group || "" }, selectChoices(c.options))
    : el("option", { value: c.value, title: c.description }, c.name || c.value)));
}

/** session/set_config_option; the answer is the agent's complete list, shown as it is. */
async function setConfigOption(configId, value, control) {
  const sessionId = state.selectedId;
  if (!sessionId) return;
  control.disabled = true;
  const seq = ++state.configSeq;
  const result = await attempt(() => rpc("session/set_config_option", { sessionId, configId, value }));
  control.disabled = false;
  if (sessionId !== state.selectedId || seq !== state.configSeq) return;
  if (result && Array.isArray(result.configOptions)) renderConfigOptions(result.configOptions);
  else await attempt(loadConfigOptions); // refused: show what the agent still has
}

// ---------- notes and tasks ----------

async function loadSidePanel() {
  const sessionId = state.selectedId;
  if (!sessionId || state.shared) return;
  const params = { workspaceId: state.workspaceId, sessionId };
  const seq = ++state.sideSeq;
  const [{ notes }, { tasks }] = await Promise.all([getJson("/api/notes", params), getJson("/api/tasks", params)]);
  // only the latest read is shown: an older one answering late would undo a save
  if (sessionId !== state.selectedId || seq !== state.sideSeq) return;
  // a list with an edit form open is left as it is (a refresh must not throw away typing);
  // it is read again when the form closes, so what changed meanwhile is not lost either
  state.sideDeferred = false;
  renderSideList($("notes"), notes, noteItem, "No notes");
  renderSideList($("tasks"), tasks, taskItem, "No tasks");
}

function renderSideList(list, rows, item, empty) {
  if (list.querySelector("form")) {
    state.sideDeferred = true;
    return;
  }
  list.replaceChildren(...(rows.length ? rows.map(item) : [el("li", { class: "muted" }, empty)]));
}

function scheduleSidePanel() {
  clearTimeout(state.sideTimer);
  state.sideTimer = setTimeout(() => attempt(loadSidePanel), 300);
}

function noteItem(note) {
  const type = note.metadata && note.metadata.type;
  const item = el("li", { testid: "note", "data-note-id": note.id },
    el("div", { class: "row" },
      el("strong", { testid: "note-title" }, note.title), " ", type ? pill(type) : null,
      el("button", { type: "button", class: "link", testid: "note-edit", "aria-label": `Edit note ${note.title}`,
        onclick: () => openForm(noteForm(note, item), (form) => item.replaceWith(form)) }, "edit")),
    el("div", { class: "content", testid: "note-content" }, note.content || ""));
  return item;
}

function taskItem(task) {
  const status = String(task.status).toLowerCase();
  const item = el("li", { testid: "task", "data-task-id": task.id },
    el("div", { class: "row" },
      el("strong", { testid: "task-title" }, task.title),
      el("span", {}, pill(status, "task-status"), " ",
        el("button", { type: "button", class: "link", testid: "task-edit", "aria-label": `Edit task ${task.title}`,
          onclick: () => openForm(taskForm(task, item), (form) => item.replaceWith(form)) }, "edit"))),
    el("div", { class: "small muted", testid: "task-objective" }, task.objective || ""));
  return item;
}

const TASK_STATUSES = ["PENDING", "IN_PROGRESS", "REVIEW_REQUIRED", "COMPLETED", "NEEDS_FIX", "BLOCKED", "CANCELLED"];

/**
 * Put a form on the page and focus its first field at once, in the same task as the click
 * that opened it: a focus deferred to a timer could land after the user (or a test) already
 * moved to another field, and the rest of the typing would go into the wrong one.
 */
function openForm(form, place) {
  place(form);
  const first = form.querySelector("input, textarea, select");
  if (first) first.focus();
}

/** An inline form; `save` gets the form's values and throws to keep the form open with the error. */
function sideForm(testid, fields, save, onClose) {
  const error = el("div", { class: "small form-error", testid: `${testid}-error`, role: "alert" });
  const cancel = () => {
    onClose();
    if (state.sideDeferred) attempt(loadSidePanel); // a refresh waited for this form
  };
  const form = el("form", { class: "side-form", testid },
    fields, error,
    el("div", { class: "row" },
      el("button", { type: "submit", testid: `${testid}-save` }, "Save"),
      el("button", { type: "button", testid: `${testid}-cancel`, onclick: cancel }, "Cancel")));
  form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    for (const b of form.querySelectorAll("button")) b.disabled = true;
    try {
      await save(form);
      onClose(); // the lists below show the saved version
      await loadSidePanel();
    } catch (err) {
      error.textContent = err.message || String(err);
      for (const b of form.querySelectorAll("button")) b.disabled = false;
    }
  });
  return form;
}

function labelled(text, control) {
  return el("label", { class: "stacked" }, el("span", { class: "small" }, text), control);
}

/** Create (note undefined) or edit a note: POST /api/notes, with noteId when editing. */
function noteForm(note, replaced) {
  const title = el("input", { name: "title", testid: "note-title-input", maxlength: 200, required: true,
    value: note ? note.title : "" });
  const content = el("textarea", { name: "content", testid: "note-content-input", rows: 4 });
  content.value = note ? note.content || "" : "";
  const close = () => (replaced ? form.replaceWith(replaced) : form.remove());
  const form = sideForm(note ? "note-form" : "new-note-form",
    [labelled("Title", title), labelled("Content", content)],
    async () => {
      const payload = { workspaceId: state.workspaceId, title: title.value, content: content.value };
      if (note) payload.noteId = note.id;
      else payload.sessionId = state.selectedId;
      await sendJson("POST", "/api/notes", payload);
    }, close);
  return form;
}

/** Create (task undefined) or edit a task: POST /api/tasks, or PATCH /api/tasks/{id}. */
function taskForm(task, replaced) {
  const title = el("input", { name: "title", testid: "task-title-input", maxlength: 200, required: true,
    value: task ? task.title : "" });
  const objective = el("textarea", { name: "objective", testid: "task-objective-input", rows: 3, required: true });
  objective.value = task ? task.objective || "" : "";
  const fields = [labelled("Title", title), labelled("Objective", objective)];
  let status = null;
  if (task) {
    status = el("select", { name: "status", testid: "task-status-input" },
      TASK_STATUSES.map((s) => el("option", { value: s, selected: s === task.status }, s.toLowerCase())));
    fields.push(labelled("Status", status));
  }
  const close = () => (replaced ? form.replaceWith(replaced) : form.remove());
  const form = sideForm(task ? "task-form" : "new-task-form", fields, async () => {
    const payload = { title: title.value, objective: objective.value };
    if (task) {
      payload.status = status.value;
      await sendJson("PATCH", `/api/tasks/${encodeURIComponent(task.id)}`, payload);
    } else {
      await sendJson("POST", "/api/tasks", { ...payload, workspaceId: state.workspaceId, sessionId: state.selectedId });
    }
  }, close);
  return form;
}

function openNewForm(slotId, makeForm) {
  if (!state.selectedId) return;
  const slot = $(slotId);
  if (!slot.firstChild) openForm(makeForm(), (form) => slot.append(form));
}

// ---------- search ----------

/** The server's snippet is HTML with only <mark> tags and escaped text: rebuilt as nodes, never parsed. */
function snippetNodes(snippet) {
  const unescape = (text) => text.replace(/&(lt|gt|quot|#x27|#39|amp);/g, (_, name) =>
    ({ lt: "<", gt: ">", quot: "\"", "#x27": "'", "#39": "'", amp: "&" })[name]);
  const nodes = [];
  const parts = String(snippet || "").split(/(<mark>|<\/mark>)/);
  let marked = false;
  for (const part of parts) {
    if (part === "<mark>") marked = true;
    else if (part === "</mark>") marked = false;
    else if (part) nodes.push(marked ? el("mark", {}, unescape(part)) : document.createTextNode(unescape(part)));
  }
  return nodes;
}

async function runSearch(event) {
  if (event) event.preventDefault();
  const q = $("search-input").value.trim();
  if (!q) return;
  state.search = { q, next: null };
  $("search-results").replaceChildren();
  await loadSearchPage();
}

async function loadSearchPage() {
  const search = state.search;
  if (!search) return;
  const params = { workspaceId: state.workspaceId, q: search.q, limit: "20" };
  if (search.next) params.after = search.next;
  const body = await getJson("/api/search", params);
  if (search !== state.search) return; // a newer search replaced this one
  search.next = body.next || null;
  const list = $("search-results");
  list.append(...body.results.map(searchHit));
  const count = list.children.length;
  $("search-summary").textContent = count
    ? `${count}${search.next ? "+" : ""} result${count === 1 ? "" : "s"} for “${search.q}”`
    : `No results for “${search.q}”`;
  $("search-more").hidden = !search.next;
  $("search-panel").hidden = false;
}

function searchHit(hit) {
  const name = hit.sessionName || hit.sessionId.slice(0, 8);
  const href = `#${new URLSearchParams({ ws: state.workspaceId, session: hit.sessionId, event: hit.eventId })}`;
  return el("li", { testid: "search-hit", "data-session-id": hit.sessionId, "data-event-id": hit.eventId },
    el("a", { href, testid: "search-hit-link",
      onclick: (ev) => { ev.preventDefault(); openHit(hit); } },
      el("span", { class: "row small muted" },
        el("span", { testid: "search-hit-session" }, name),
        el("span", {}, `${hit.kind === "user_message" ? "prompt" : "answer"} · ${formatTime(hit.at)}`)),
      el("span", { class: "snippet", testid: "search-hit-snippet" }, snippetNodes(hit.snippet))));
}

/** Open the hit's session (if not open) and scroll to its event once the replay shows it. */
function openHit(hit) {
  const eventId = Number(hit.eventId);
  if (hit.sessionId === state.selectedId && state.stream) {
    state.pendingJump = eventId;
    if (state.lastEventId >= eventId) jumpToEvent(eventId);
  } else {
    selectSession(hit.sessionId);
    state.pendingJump = eventId;
  }
  history.replaceState(null, "", `#${new URLSearchParams({ ws: state.workspaceId, session: hit.sessionId, event: hit.eventId })}`);
}

function closeSearch() {
  state.search = null;
  $("search-panel").hidden = true;
  $("search-results").replaceChildren();
}

// ---------- start ----------

function readInitialState() {
  const sharedSession = document.body.dataset.shareSession;
  if (sharedSession) {
    // /s/<token>: the token stays in this page's memory, never in localStorage
    state.shared = true;
    state.token = decodeURIComponent(window.location.pathname.split("/")[2] || "");
    return sharedSession;
  }
  const query = new URLSearchParams(window.location.search);
  const hash = new URLSearchParams(window.location.hash.slice(1));
  const token = query.get("token");
  if (token) localStorage.setItem("routaToken", token);
  state.token = token || localStorage.getItem("routaToken");
  state.workspaceId = hash.get("ws") || query.get("workspaceId") || "default";
  const jump = Number(hash.get("event"));
  if (hash.get("session") && jump > 0) state.initialJump = jump;
  return hash.get("session");
}

async function switchWorkspace() {
  closeSession();
  closeSearch();
  state.workspaceId = $("workspace-select").value;
  history.replaceState(null, "", `#${new URLSearchParams({ ws: state.workspaceId })}`);
  state.sessions.clear();
  renderSessionList();
  openSessionList();
}

function wireControls() {
  $("error-close").addEventListener("click", clearError);
  $("workspace-select").addEventListener("change", switchWorkspace);
  $("new-session-form").addEventListener("submit", createSession);
  $("prompt-form").addEventListener("submit", sendPrompt);
  $("prompt-input").addEventListener("keydown", (ev) => {
    if (ev.key === "Enter" && !ev.shiftKey) $("prompt-form").requestSubmit();
    if (ev.key === "Enter" && !ev.shiftKey) ev.preventDefault();
  });
  $("cancel-button").addEventListener("click", cancelTurn);
  $("share-button").addEventListener("click", () => attempt(shareSession));
  $("mode-select").addEventListener("change", changeMode);
  $("refresh-side").addEventListener("click", () => attempt(loadSidePanel));
  $("new-note").addEventListener("click", () => openNewForm("note-form-slot", () => noteForm()));
  $("new-task").addEventListener("click", () => openNewForm("task-form-slot", () => taskForm()));
  $("search-form").addEventListener("submit", (ev) => attempt(() => runSearch(ev)));
  $("search-more").addEventListener("click", () => attempt(loadSearchPage));
  $("search-close").addEventListener("click", closeSearch);
  // the menu closes once a format is picked (the download starts by itself)
  $("export-menu").addEventListener("click", (ev) => {
    if (ev.target.closest("a")) setTimeout(() => { $("export-menu").open = false; }, 0);
  });
}

/** The session of a share link, for the header (the list and its stream are not readable). */
async function loadSharedSession() {
  const sessionId = state.selectedId;
  const { session } = await getJson(`/api/sessions/${encodeURIComponent(sessionId)}`);
  state.sessions.set(sessionId, session);
  renderSessionHeader();
}

async function startShared(sessionId) {
  document.title = "Shared session (read-only)";
  document.querySelector(".topbar h1").textContent = "Shared session (read-only)";
  $("error-close").addEventListener("click", clearError);
  selectSession(sessionId);
  $("export-menu").addEventListener("click", (ev) => {
    if (ev.target.closest("a")) setTimeout(() => { $("export-menu").open = false; }, 0);
  });
  await attempt(loadSharedSession);
  document.body.dataset.ready = "true";
}

async function main() {
  const initialSession = readInitialState();
  if (state.shared) return startShared(initialSession);
  wireControls();
  await attempt(loadWorkspaces);
  await attempt(loadProviders);
  openSessionList();
  if (initialSession) {
    selectSession(initialSession);
    if (state.initialJump) state.pendingJump = state.initialJump;
  }
  document.body.dataset.ready = "true";
}

main();

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
  promptsRunning: 0,
  rpcId: 0,
  sideTimer: null,        // debounced notes/tasks refresh
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

class RpcError extends Error {
  constructor(method, error) {
    const agent = error.data && error.data.agentError;
    const detail = agent ? ` (agent: ${agent.message})` : "";
    super(`${method}: ${error.message}${detail} [${error.code}]`);
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
  renderSessionList();
  if (state.shared) return void attempt(openStream); // the share token reads nothing else
  history.replaceState(null, "", `#${new URLSearchParams({ ws: state.workspaceId, session: sessionId })}`);
  attempt(openStream);
  attempt(loadSidePanel);
}

function closeSession() {
  if (state.stream) state.stream.close();
  clearTimeout(state.streamRetry);
  Object.assign(state, { stream: null, streamRetry: null, selectedId: null, lastEventId: 0, lastItem: null });
  state.toolCalls.clear();
  state.queued.clear();
  renderQueue();
  $("conversation").replaceChildren();
  $("share-url").hidden = true;
  renderPlan(null);
  $("session-view").hidden = true;
  $("no-session").hidden = false;
  $("notes").replaceChildren();
  $("tasks").replaceChildren();
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
    setPill($("stream-status"), "live"); // the connected frame carries no eventId (§5.5)
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
    addUserMessage(contentText(u.content));
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
    addMarker(`turn complete: ${u.stopReason || "?"}`, "turn-complete");
    scheduleSidePanel(); // an agent may have written notes or tasks during the turn
  },
  error: (u) => addMarker(`error: ${u.message || "turn failed"}`, "turn-error", "error"),
  acp_status: (u) => addAcpStatus(u),
  current_mode_update: (u) => {
    setMode(u.currentModeId || u.modeId);
    addMarker(`mode: ${u.currentModeId || u.modeId}`, "mode-changed");
  },
  session_renamed: (u) => addMarker(`renamed to “${u.name}”`, "renamed"),
  process_output: () => {}, // stderr of the agent: too noisy for the conversation
  terminal_output: (u) => addTerminalOutput(u),
  available_commands_update: () => {},
  config_option_update: () => {},
  usage_update: () => {},
  session_info_update: () => {},
};

function renderEvent(event) {
  const update = event.update || {};
  const render = RENDERERS[update.sessionUpdate];
  if (render) render(update);
  else addItem(el("pre", { class: "raw", testid: "raw-event" }, JSON.stringify(event, null, 2)), "raw");
  scrollToEnd();
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

function renderPlan(entries) {
  const box = $("plan");
  if (!entries || !entries.length) {
    box.hidden = true;
    box.replaceChildren();
    return;
  }
  box.hidden = false;
  box.replaceChildren(el("strong", {}, "Plan"), el("ol", {},
    entries.map((e) => el("li", { class: e.status, testid: "plan-entry" },
      `${e.content} `, pill(e.status, "plan-status")))));
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
  setTurnRunning(+1);
  // session/prompt answers when the turn ends; the stream shows progress meanwhile
  try {
    // while a turn runs the prompt waits in the session's queue instead of being refused
    const result = await attempt(() => rpc("session/prompt", { sessionId, prompt: text, ifBusy: "enqueue" }));
    if (result && result.pending) showError("The turn is still running (prompt timeout); its events keep streaming.");
  } finally {
    setTurnRunning(-1);
  }
}

function setTurnRunning(delta) {
  state.promptsRunning += delta;
  $("turn-status").hidden = state.promptsRunning <= 0;
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

// ---------- notes and tasks ----------

async function loadSidePanel() {
  const sessionId = state.selectedId;
  if (!sessionId || state.shared) return;
  const params = { workspaceId: state.workspaceId, sessionId };
  const [{ notes }, { tasks }] = await Promise.all([getJson("/api/notes", params), getJson("/api/tasks", params)]);
  if (sessionId !== state.selectedId) return;
  $("notes").replaceChildren(...(notes.length ? notes.map(noteItem) : [el("li", { class: "muted" }, "No notes")]));
  $("tasks").replaceChildren(...(tasks.length ? tasks.map(taskItem) : [el("li", { class: "muted" }, "No tasks")]));
}

function scheduleSidePanel() {
  clearTimeout(state.sideTimer);
  state.sideTimer = setTimeout(() => attempt(loadSidePanel), 300);
}

function noteItem(note) {
  const type = note.metadata && note.metadata.type;
  return el("li", { testid: "note" },
    el("div", { class: "row" }, el("strong", {}, note.title), " ", type ? pill(type) : null),
    el("div", { class: "content" }, note.content || ""));
}

function taskItem(task) {
  return el("li", { testid: "task" },
    el("div", { class: "row" }, el("strong", {}, task.title), pill(String(task.status).toLowerCase())),
    el("div", { class: "small muted" }, task.objective || ""));
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
  return hash.get("session");
}

async function switchWorkspace() {
  closeSession();
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
  if (initialSession) selectSession(initialSession);
  document.body.dataset.ready = "true";
}

main();

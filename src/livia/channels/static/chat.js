// Livia's web chat: conversations in tabs, replies streamed from POST /v1/chat as SSE.
"use strict";
(() => {
  const TOKEN_KEY = "livia.apiToken";
  const USER_KEY = "livia.userId";
  const CONVS_KEY = "livia.conversations"; // a cache: the server holds the truth
  const ACTIVE_KEY = "livia.activeConversation";
  const REMOVED_KEY = "livia.removedConversations";
  const IDLE_TIMEOUT_MS = 180000; // abandon a reply stream silent for this long
  const HEALTH_TIMEOUT_MS = 5000;
  const MAX_SAVED_MESSAGES = 200; // per conversation, in localStorage
  // A reply whose stream broke is looked for in the stored history: first after 1 s, then
  // twice as long each time up to 10 s, for at most 3 minutes. Never re-sent silently.
  const WAIT_FIRST_MS = 1000;
  const WAIT_MAX_MS = 10000;
  const WAIT_LIMIT_MS = 180000;

  const $ = (id) => document.getElementById(id);
  const el = (tag, cls, text) => {
    const node = document.createElement(tag);
    if (cls) node.className = cls;
    if (text !== undefined) node.textContent = text;
    return node;
  };
  const uid = (prefix) => {
    const bytes = new Uint8Array(8);
    crypto.getRandomValues(bytes);
    return prefix + Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
  };
  const plural = (n, one, many) => `${n} ${n === 1 ? one : many || `${one}s`}`;
  const store = {
    get(key, fallback) {
      try { const v = localStorage.getItem(key); return v === null ? fallback : JSON.parse(v); } catch { return fallback; }
    },
    set(key, value) {
      try { localStorage.setItem(key, JSON.stringify(value)); } catch { /* full or private: keep in memory */ }
    },
  };
  // The API token lives in sessionStorage (this tab only, gone when it closes), not in
  // localStorage; a token an older version left there is moved over once.
  let memoryToken = "";
  const getToken = () => {
    try {
      const old = localStorage.getItem(TOKEN_KEY);
      if (old !== null) {
        localStorage.removeItem(TOKEN_KEY);
        if (!sessionStorage.getItem(TOKEN_KEY)) sessionStorage.setItem(TOKEN_KEY, old);
      }
      return sessionStorage.getItem(TOKEN_KEY) || memoryToken;
    } catch { return memoryToken; }
  };
  const setToken = (v) => {
    memoryToken = v;
    try { sessionStorage.setItem(TOKEN_KEY, v); } catch { /* storage off: memory only */ }
  };
  const authHeaders = (extra) => {
    const headers = { ...extra };
    const token = getToken();
    if (token) headers.Authorization = `Bearer ${token}`;
    return headers;
  };

  // ---- state -------------------------------------------------------------------------
  /**
   * This browser's own id, read at each use: two tabs opened at once on a first visit may
   * both make one, and the one stored last is the one both use from then on.
   */
  function browserUser() {
    let id = store.get(USER_KEY, "");
    if (!id) { id = uid("web-"); store.set(USER_KEY, id); }
    return id;
  }
  browserUser();
  let keyUser = ""; // a user key acts as its own user (`GET /v1/me`)
  const currentUser = () => keyUser || browserUser();
  /**
   * A conversation: {id, title, messages, synced?} (synced: the server has it). Messages:
   * user {role, id, text, state: sending|sent|queued}; assistant {role, id (its question's
   * message_id), text, tools, state: streaming|waiting|done|error|lost|stopped, error, retry}.
   */
  let convs = store.get(CONVS_KEY, []).filter((c) => c && c.id && Array.isArray(c.messages));
  let activeId = store.get(ACTIVE_KEY, "");
  const removed = new Set(store.get(REMOVED_KEY, [])); // deleted here: never re-added from a cache
  const busy = new Set(); // ids of conversations this tab is sending in or waiting for
  const queues = new Map(); // conversation id -> queued user messages, in order
  const live = new WeakMap(); // reply -> {controller?, wake?, stopped?} while this tab works on it
  const nodes = new WeakMap(); // message -> its DOM node (active tab only)
  const knownServers = new Set(); // tool servers ("zapier"), to show zapier__x as zapier.x
  const probe = { sent: 0, replies: 0, errors: 0, lastEvent: "", listed: false, loads: 0, polls: 0 };
  window.liviaChat = probe; // read by the browser tests
  /** Files waiting in the composer: {name, content_type, data (a data: URL), size}. */
  let pending = [];
  const payloads = new WeakMap(); // user message -> its attachments, as sent (not cached)
  const KEEP_PREVIEW = 200 * 1024; // an image preview up to this size is kept with the message

  const saved = (c) => ({
    id: c.id,
    title: c.title,
    synced: !!c.synced,
    messages: c.messages.slice(-MAX_SAVED_MESSAGES).map((m) => {
      const { status, ...rest } = m; // the status line is only for the live stream
      return rest;
    }),
  });

  /** Writes this tab's conversations to the cache, keeping those other tabs added. */
  function save() {
    const mine = new Set(convs.map((c) => c.id));
    const others = store.get(CONVS_KEY, []).filter((c) => c && c.id && !mine.has(c.id) && !removed.has(c.id));
    store.set(CONVS_KEY, [...convs.map(saved), ...others]);
    store.set(ACTIVE_KEY, activeId);
    store.set(REMOVED_KEY, [...removed].slice(-100));
  }
  const current = () => convs.find((c) => c.id === activeId);

  function newConversation() {
    const conv = { id: uid("web-"), title: "New chat", messages: [] };
    convs.push(conv);
    activeId = conv.id;
    save();
    renderTabs();
    renderThread();
    $("input").focus();
  }

  // ---- text shown to people ------------------------------------------------------------
  /** What a reply's error code means, as a sentence (the raw codes are for logs). */
  const SENTENCES = {
    model_unreachable: "Livia could not reach the model service.",
    model_timeout: "The model took too long to answer.",
    model_rate_limited: "The model is rate-limited right now.",
    model_capacity: "The model has no capacity left for the moment.",
    model_unavailable: "The model service is having trouble.",
    model_interrupted: "The connection to the model broke during the answer.",
    model_auth: "The model service refused Livia's credentials; an operator needs to check the API key.",
    model_rejected: "The model service rejected the request.",
    model_error: "The model service reported an error.",
    internal: "Something went wrong inside Livia.",
    busy: "Livia is busy right now.",
    not_running: "Livia is restarting.",
    not_ready: "Livia is starting or stopping.",
    timeout: "The reply is taking a long time.",
    unauthorized: "The API token was not accepted.",
    forbidden: "This server does not allow that.",
    unknown_conversation: "This conversation is not on the server.",
    message_id_conflict: "This message id was already used for another message.",
    payload_too_large: "This message is too long for this server.",
    text_too_large: "This message is too long for this server.",
  };
  const sentence = (code) => {
    if (!code) return "";
    const s = String(code);
    if (SENTENCES[s]) return SENTENCES[s];
    return /^[a-z0-9_]+$/.test(s) ? `Something went wrong (${s.replace(/_/g, " ")}).` : s;
  };
  /** {"error": {type, message}} (or {type, message}): its type and message. */
  const errorOf = (body) => {
    const e = body && typeof body === "object" && "error" in body ? body.error : body;
    if (e && typeof e === "object") return { type: String(e.type || ""), message: String(e.message || "") };
    return { type: "", message: typeof e === "string" ? e : "" };
  };
  /** Names like zapier__create_task (how the model sees tools) as the cards show them. */
  const toolNames = (text) => text.replace(/\b([A-Za-z0-9-]+)__([A-Za-z0-9_]+)/g, (m, server, tool) => (knownServers.has(server) ? `${server}.${tool}` : m));
  const noteTool = (name) => { const dot = String(name).indexOf("."); if (dot > 0) knownServers.add(String(name).slice(0, dot)); };

  // ---- Markdown ------------------------------------------------------------------------
  const md = typeof window.markdownit === "function" ? window.markdownit({ html: false, linkify: true, breaks: true }) : null;
  const purify = window.DOMPurify && window.DOMPurify.isSupported ? window.DOMPurify : null;

  /** Markdown (markdown-it), sanitised (DOMPurify), as DOM nodes; plain text without them. */
  function markdown(text) {
    if (!md || !purify) {
      return text.split(/\n{2,}/).filter((p) => p.trim()).map((p) => el("p", "plain", p));
    }
    const frag = purify.sanitize(md.render(text), {
      RETURN_DOM_FRAGMENT: true,
      FORBID_TAGS: ["style", "form", "input", "button", "textarea", "select"],
      FORBID_ATTR: ["style"], // the page's CSP refuses inline styles anyway
    });
    for (const a of frag.querySelectorAll("a[href]")) {
      a.target = "_blank";
      a.rel = "noopener noreferrer";
    }
    for (const pre of frag.querySelectorAll("pre")) {
      const box = el("div", "codeblock");
      pre.replaceWith(box);
      const copy = el("button", "copy", "Copy");
      copy.type = "button";
      copy.title = "Copy this code";
      box.append(copy, pre);
    }
    for (const table of frag.querySelectorAll("table")) {
      const wrap = el("div", "table-wrap");
      table.replaceWith(wrap);
      wrap.append(table);
    }
    return [...frag.childNodes];
  }

  async function copyCode(button) {
    const code = button.parentElement.querySelector("pre").innerText.replace(/\n$/, "");
    let ok = false;
    try { await navigator.clipboard.writeText(code); ok = true; } catch {
      const area = el("textarea");
      area.value = code;
      area.setAttribute("readonly", "");
      area.className = "offscreen";
      document.body.append(area);
      area.select();
      try { ok = document.execCommand("copy"); } catch { ok = false; }
      area.remove();
    }
    button.textContent = ok ? "Copied" : "Copy failed";
    setTimeout(() => { button.textContent = "Copy"; }, 1500);
  }

  // ---- rendering ---------------------------------------------------------------------
  function renderTabs() {
    const tabs = $("tabs");
    tabs.replaceChildren(...convs.map((c) => {
      const tab = el("div", "tab");
      tab.setAttribute("role", "tab");
      tab.setAttribute("aria-selected", String(c.id === activeId));
      tab.dataset.conversation = c.id;
      const asked = c.messages.filter((m) => m.role === "user").length;
      tab.title = asked ? `${c.title} · ${plural(asked, "message")}` : c.title;
      if (busy.has(c.id)) tab.append(el("span", "busy"));
      tab.append(el("span", "title", c.title));
      const close = el("button", "close", "×");
      close.type = "button";
      close.title = c.messages.length ? "Delete this conversation" : "Close this conversation";
      close.addEventListener("click", (ev) => {
        ev.stopPropagation();
        if (!c.messages.length || tab.classList.contains("confirm")) { removeConversation(c.id); return; }
        tab.classList.add("confirm"); // a second click deletes it
        close.textContent = "Delete?";
        setTimeout(() => { if (tab.isConnected) { tab.classList.remove("confirm"); close.textContent = "×"; } }, 4000);
      });
      tab.append(close);
      tab.addEventListener("click", () => {
        if (c.id === activeId) return;
        activeId = c.id;
        save();
        renderTabs();
        renderThread();
        loadConversation(c);
      });
      return tab;
    }));
    const active = tabs.querySelector('[aria-selected="true"]');
    if (active && active.scrollIntoView) active.scrollIntoView({ block: "nearest", inline: "nearest" });
  }

  /** Deletes a conversation (on the server too, when it has it) and closes its tab. */
  async function removeConversation(id) {
    const i = convs.findIndex((c) => c.id === id);
    if (i < 0) return;
    const [conv] = convs.splice(i, 1);
    removed.add(id);
    queues.delete(id);
    if (activeId === id) activeId = convs.length ? convs[Math.max(0, i - 1)].id : "";
    if (!convs.length) newConversation(); else { save(); renderTabs(); renderThread(); }
    if (conv.synced || conv.messages.length) {
      let res = null;
      try {
        res = await fetch(`/v1/conversations/${encodeURIComponent(id)}`, { method: "DELETE", headers: authHeaders() });
      } catch { /* offline: it is gone here; the server keeps it */ }
      if (res && res.status === 409) { // a reply is on the way: keep it
        removed.delete(id);
        convs.splice(Math.min(i, convs.length), 0, conv);
        save();
        renderTabs();
        showNotice("That conversation has a reply on the way; delete it once the reply is there.");
      }
    }
  }

  function messageNode(msg) {
    const node = el("div", `msg ${msg.role}`);
    if (msg.role === "assistant") node.append(el("span", "logo", "L"));
    const bubble = el("div", "bubble");
    if (msg.role === "assistant") {
      const actions = el("div", "actions");
      const retry = el("button", "retry", "Retry");
      retry.type = "button";
      retry.addEventListener("click", () => retryReply(msg));
      actions.append(retry);
      bubble.append(el("div", "tools"), el("div", "content"), el("div", "status"), el("div", "error"), actions);
    } else {
      bubble.append(el("div", "files"), el("div", "text"), el("div", "meta"));
    }
    node.append(bubble);
    nodes.set(msg, node);
    updateMessage(msg);
    return node;
  }

  const ARGS_SHOWN = 240;
  /** A tool's arguments on one line: key: value · key: value. */
  const argsText = (args) => {
    if (!args || typeof args !== "object") return "";
    const text = Object.entries(args).map(([k, v]) => `${k}: ${typeof v === "string" ? v : JSON.stringify(v)}`).join(" · ");
    return text.length > ARGS_SHOWN ? `${text.slice(0, ARGS_SHOWN - 1)}…` : text;
  };

  function updateMessage(msg) {
    const node = nodes.get(msg);
    if (!node) return;
    node.dataset.state = msg.state || "done";
    const bubble = node.querySelector(".bubble");
    if (msg.role === "user") {
      const sent = payloads.get(msg) || [];
      bubble.querySelector(".files").replaceChildren(...(msg.files || []).map((f, i) => {
        const src = (sent[i] && sent[i].data) || f.preview || "";
        if (src.startsWith("data:image/")) {
          const img = el("img", "attachment");
          img.src = src;
          img.alt = f.name;
          img.title = f.name;
          return img;
        }
        return el("span", "chip-file", f.name);
      }));
      bubble.querySelector(".text").textContent = msg.files && msg.files.length && /^\(sent \d+ files?\)$/.test(msg.text) ? "" : msg.text;
      const meta = bubble.querySelector(".meta");
      meta.textContent = msg.state === "queued" ? "queued: sent when the reply above is done" : "";
      meta.hidden = !meta.textContent;
      return;
    }
    bubble.querySelector(".tools").replaceChildren(...(msg.tools || []).map((t) => {
      const row = el("div", "tool");
      row.dataset.state = t.state;
      const head = el("div", "head");
      head.append(
        el("span", "icon", t.state === "running" ? "↻" : t.state === "ok" ? "✓" : "✗"),
        el("span", "name", t.tool),
        el("span", "summary", t.state === "running" ? "running…" : t.summary || (t.state === "ok" ? "done" : "failed")),
      );
      row.append(head);
      const args = argsText(t.args);
      if (args) row.append(el("div", "args", args));
      row.title = [t.tool, args, t.summary].filter(Boolean).join("\n");
      return row;
    }));
    bubble.querySelector(".content").replaceChildren(...markdown(toolNames(msg.text || "")));
    const status = bubble.querySelector(".status");
    status.textContent = msg.state === "streaming" || msg.state === "waiting" ? msg.status || "" : "";
    status.hidden = !status.textContent;
    const err = bubble.querySelector(".error");
    err.textContent = msg.error || "";
    err.hidden = !msg.error;
    const retry = bubble.querySelector(".retry");
    retry.hidden = !msg.retry || ["streaming", "waiting"].includes(msg.state);
    retry.parentElement.hidden = retry.hidden;
  }

  function renderThread() {
    const thread = $("thread");
    const conv = current();
    if (!conv || !conv.messages.length) {
      const empty = $("empty-template").content.firstElementChild.cloneNode(true);
      empty.querySelectorAll(".chip").forEach((chip) => chip.addEventListener("click", () => {
        $("input").value = chip.textContent;
        submit();
      }));
      thread.replaceChildren(empty);
    } else {
      thread.replaceChildren(...conv.messages.map(messageNode));
    }
    thread.scrollTop = thread.scrollHeight;
    renderComposer();
  }

  function renderComposer() {
    const conv = current();
    const working = !!(conv && busy.has(conv.id));
    $("stop").hidden = !working;
    $("send").textContent = working ? "Queue" : "Send";
    $("send").title = working ? "Send after the current reply" : "Send";
  }

  let frame = 0;
  const dirty = new Set();
  function refresh(conv, msg) {
    if (conv.id !== activeId) return;
    dirty.add(msg);
    if (frame) return;
    frame = requestAnimationFrame(() => {
      frame = 0;
      const thread = $("thread");
      const atBottom = thread.scrollHeight - thread.scrollTop - thread.clientHeight < 80;
      for (const m of dirty) updateMessage(m);
      dirty.clear();
      if (atBottom) thread.scrollTop = thread.scrollHeight;
    });
  }

  function showNotice(text) {
    const notice = $("notice");
    notice.textContent = text || "";
    notice.hidden = !text;
  }

  // ---- talking to the server ---------------------------------------------------------
  /** GET (or other) on the API: {status, ok, body}; throws when the server is unreachable. */
  async function api(path, options = {}) {
    const res = await fetch(path, { cache: "no-store", ...options, headers: authHeaders(options.headers) });
    const type = res.headers.get("content-type") || "";
    const body = type.includes("json") ? await res.json().catch(() => null) : null;
    return { status: res.status, ok: res.ok, body, headers: res.headers };
  }

  /** A 404 saying the conversation is not there (not a server without the endpoint). */
  const gone = (res) => res.status === 404 && errorOf(res.body).type === "unknown_conversation";

  /** Yields {event, data} from a fetch() response body in server-sent-events format. */
  async function* sse(response, onActivity) {
    const reader = response.body.getReader();
    const decoder = new TextDecoder();
    let buffer = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      onActivity();
      buffer += decoder.decode(value, { stream: true });
      let cut;
      while ((cut = buffer.search(/\r?\n\r?\n/)) >= 0) {
        const block = buffer.slice(0, cut);
        buffer = buffer.slice(cut).replace(/^\r?\n\r?\n/, "");
        let event = "message";
        const data = [];
        for (const line of block.split(/\r?\n/)) {
          if (!line || line.startsWith(":")) continue;
          const colon = line.indexOf(":");
          const field = colon < 0 ? line : line.slice(0, colon);
          const val = colon < 0 ? "" : line.slice(colon + 1).replace(/^ /, "");
          if (field === "event") event = val;
          else if (field === "data") data.push(val);
        }
        if (!data.length) continue;
        let parsed;
        try { parsed = JSON.parse(data.join("\n")); } catch { parsed = { text: data.join("\n") }; }
        yield { event, data: parsed };
      }
    }
  }

  /** A `status` event (the manager waiting or retrying) as one line. */
  function statusText(data) {
    if (!data || typeof data !== "object") return "";
    const text = data.message || data.text || data.status || "";
    if (text) return String(text);
    const what = data.upstream === "openai" || data.upstream === "model" ? "the model" : data.upstream || data.tool || "";
    const secs = Number(data.retry_in ?? data.wait ?? data.seconds);
    const when = Number.isFinite(secs) && secs > 0 ? ` (${Math.ceil(secs)} s)` : "";
    if (data.state === "retrying" || data.kind === "retry") return `Retrying ${what || "the call"}${data.attempt ? `, attempt ${data.attempt}` : ""}${when}…`;
    if (data.state === "waiting" || data.kind === "wait") return `Waiting for ${what || "capacity"}${when}…`;
    return "";
  }

  /** Applies one stream event to `reply`; true when the stream is over. */
  function apply(reply, event, data) {
    probe.lastEvent = event;
    const kind = event !== "message" ? event : data.type || data.kind || "delta";
    if (kind === "delta" || kind === "text") {
      reply.text += data.text || "";
      reply.status = "";
    } else if (kind === "status") {
      reply.status = statusText(data);
    } else if (kind === "tool_started") {
      noteTool(data.tool || "");
      reply.status = "";
      reply.tools.push({ id: data.call_id || "", tool: data.tool || "tool", state: "running", summary: "", args: data.arguments || null });
    } else if (kind === "tool_finished") {
      noteTool(data.tool || "");
      const t = reply.tools.find((x) => (data.call_id ? x.id === data.call_id : x.tool === data.tool && x.state === "running"));
      const entry = t || { id: data.call_id || "", tool: data.tool || "tool", args: data.arguments || null };
      entry.state = data.ok === false ? "failed" : "ok";
      entry.summary = data.summary || "";
      if (!t) reply.tools.push(entry);
    } else if (kind === "done") {
      stored(reply, { content: typeof data.reply === "string" && data.reply ? data.reply : data.text || reply.text, error: data.error });
      return true;
    } else if (kind === "error") {
      // The server could not finish here (stopping, or too slow): the message is kept and
      // answered, so the reply is looked for in the stored history.
      const { type, message } = errorOf(data);
      reply.state = "interrupted";
      reply.status = type === "not_running" || type === "not_ready"
        ? "Livia is restarting; the message is kept. Waiting for the reply…"
        : `${sentence(type) || message || "The reply stream stopped."} Waiting for the stored reply…`;
      return true;
    }
    return false;
  }

  /** Fills `reply` from a stored assistant message {content, error}. */
  function stored(reply, msg) {
    const error = msg.error ? errorOf(msg.error) : null;
    const code = error ? error.type || error.message || String(msg.error) : "";
    reply.text = typeof msg.content === "string" && msg.content ? msg.content : reply.text;
    reply.state = code ? "error" : "done";
    reply.error = code ? `${sentence(code)} Retry asks again.` : "";
    reply.retry = code ? "new" : "";
    reply.status = "";
    for (const t of reply.tools || []) if (t.state === "running") t.state = "ok";
  }

  /**
   * Posts the message and streams its reply. Resolves to {kind: "done" | "lost" |
   * "stopped" | "unauthorized" | "refused", text?}; "lost" means it may have been
   * accepted: the stored history says.
   */
  async function exchange(conv, userMsg, reply) {
    const controller = new AbortController();
    const work = live.get(reply) || {};
    live.set(reply, Object.assign(work, { controller, stopped: false }));
    let idle = false;
    let timer = setTimeout(() => { idle = true; controller.abort(); }, IDLE_TIMEOUT_MS);
    const activity = () => { clearTimeout(timer); timer = setTimeout(() => { idle = true; controller.abort(); }, IDLE_TIMEOUT_MS); };
    try {
      const res = await fetch("/v1/chat", {
        method: "POST",
        headers: authHeaders({ "Content-Type": "application/json", Accept: "text/event-stream" }),
        body: JSON.stringify({
          conversation_id: conv.id, user_id: currentUser(), text: userMsg.text, message_id: userMsg.id,
          ...(payloads.has(userMsg) ? { attachments: payloads.get(userMsg) } : {}),
        }),
        signal: controller.signal,
      });
      if (res.status === 401) return { kind: "unauthorized" };
      const type = res.headers.get("content-type") || "";
      if (!res.ok) {
        const body = type.includes("json") ? await res.json().catch(() => null) : null;
        return { kind: "refused", text: refusal(res, body) };
      }
      userMsg.state = "sent";
      conv.synced = true;
      if (!type.includes("text/event-stream")) { // a server that answered in one piece
        apply(reply, "done", await res.json());
        return { kind: "done" };
      }
      for await (const { event, data } of sse(res, activity)) {
        const over = apply(reply, event, data);
        refresh(conv, reply);
        if (over) break;
      }
      return { kind: reply.state === "done" || reply.state === "error" ? "done" : "lost" };
    } catch {
      if (work.stopped) return { kind: "stopped" };
      if (idle) reply.status = "No news from the server for a long time; looking for the stored reply…";
      return { kind: "lost" };
    } finally {
      clearTimeout(timer);
      delete work.controller;
    }
  }

  /** Why the server refused a message (not accepted: it goes back into the box). */
  function refusal(res, body) {
    const { type, message } = errorOf(body);
    if (res.status === 413) {
      return `This message is too long for this server${message ? ` (${message})` : ""}. It is back in the box: shorten it and send again.`;
    }
    if (res.status === 503) {
      const after = Number(res.headers.get("retry-after"));
      const when = Number.isFinite(after) && after > 0 ? `in ${plural(Math.ceil(after), "second")}` : "in a moment";
      const why = type === "busy" ? "Livia is busy with other conversations" : type === "not_running" || type === "not_ready" ? "Livia is restarting" : "Livia cannot take messages right now";
      return `${why}; try again ${when}. Your message is back in the box.`;
    }
    const text = message && !/^[a-z0-9_]+$/.test(message) ? message : sentence(type) || `The server answered HTTP ${res.status}.`;
    return `${text.replace(/\.?$/, ".")} Your message is back in the box.`;
  }

  const sleep = (reply, ms) => new Promise((resolve) => {
    const work = live.get(reply) || {};
    live.set(reply, work);
    const t = setTimeout(resolve, ms);
    work.wake = () => { clearTimeout(t); resolve(); };
  });

  /**
   * Looks for the stored reply to `userMsg` in `GET /v1/conversations/{id}`, with backoff
   * and a bound. Resolves "done", "missing" (the server never got the message),
   * "timeout" or "stopped".
   */
  async function awaitStored(conv, userMsg, reply) {
    reply.state = "waiting";
    reply.status = reply.status || "The connection was interrupted; waiting for the stored reply…";
    refresh(conv, reply);
    const work = live.get(reply) || {};
    live.set(reply, work);
    work.stopped = false;
    const until = Date.now() + WAIT_LIMIT_MS;
    let delay = WAIT_FIRST_MS;
    let known = userMsg.state === "sent";
    let misses = 0;
    for (;;) {
      await sleep(reply, delay);
      if (work.stopped) return "stopped";
      probe.polls += 1;
      let res = null;
      try { res = await api(`/v1/conversations/${encodeURIComponent(conv.id)}`); } catch { /* down: try again */ }
      if (work.stopped) return "stopped";
      if (res && res.ok && res.body && Array.isArray(res.body.messages)) {
        const msgs = res.body.messages;
        const answer = msgs.find((m) => m.role === "assistant" && m.message_id === userMsg.id);
        if (answer) {
          userMsg.state = "sent";
          conv.synced = true;
          stored(reply, answer);
          return "done";
        }
        if (msgs.some((m) => m.role === "user" && m.message_id === userMsg.id)) { known = true; userMsg.state = "sent"; } else if (!known) misses += 1;
      } else if (res && gone(res) && !known) {
        misses += 1;
      }
      if (misses >= 3) return "missing";
      if (Date.now() > until) return "timeout";
      delay = Math.min(delay * 2, WAIT_MAX_MS);
    }
  }

  /** Sends `userMsg` (or asks again for its reply) and follows it to the end. */
  async function converse(conv, userMsg, reply, { poll = false } = {}) {
    busy.add(conv.id);
    renderTabs();
    if (conv.id === activeId) renderComposer();
    let outcome = poll ? { kind: "lost" } : await exchange(conv, userMsg, reply);
    if (outcome.kind === "unauthorized") {
      const hadToken = !!getToken();
      if (await askToken(hadToken ? "That token was not accepted. Check it (LIVIA_SERVER__API_TOKEN or your key) and try again." : "")) {
        await whoAmI();
        outcome = await exchange(conv, userMsg, reply); // same message_id: answered once
        if (outcome.kind !== "unauthorized") sync();
      }
      if (outcome.kind === "unauthorized") {
        outcome = {
          kind: "refused",
          text: getToken()
            ? "The API token is wrong (or was revoked): the server did not accept it. Set the right one with the Token button; your message is back in the box."
            : "This server needs an API token: set it with the Token button. Your message is back in the box.",
        };
      }
    }
    if (outcome.kind === "lost") {
      refresh(conv, reply);
      const found = await awaitStored(conv, userMsg, reply);
      if (found === "stopped") outcome = { kind: "stopped" };
      else if (found === "missing") {
        Object.assign(reply, { state: "lost", status: "", retry: "same", error: "Livia did not receive this message (the connection failed). Retry sends it again." });
      } else if (found === "timeout") {
        Object.assign(reply, {
          state: "lost",
          status: "",
          retry: "same",
          error: "The reply has not arrived yet. It will show here once Livia has it (reload later), or press Retry: the same message is answered only once.",
        });
      }
    }
    if (outcome.kind === "stopped") {
      Object.assign(reply, { state: "stopped", status: "", retry: "same", error: "Stopped. Livia may still finish this reply: Retry shows it (the message is answered only once)." });
    }
    if (outcome.kind === "refused") {
      conv.messages = conv.messages.filter((m) => m !== userMsg && m !== reply);
      if (!conv.messages.length && conv.title !== "New chat" && !conv.synced) conv.title = "New chat";
      const input = $("input");
      if (conv.id === activeId || !input.value.trim()) {
        input.value = input.value.trim() ? `${userMsg.text}\n${input.value}` : userMsg.text;
        autosize();
      }
      showNotice(outcome.text);
      probe.errors += 1;
    } else if (reply.state === "done") {
      probe.replies += 1;
    } else {
      probe.errors += 1;
    }
    busy.delete(conv.id);
    save();
    renderTabs();
    if (conv.id === activeId) {
      if (outcome.kind === "refused") renderThread(); else refresh(conv, reply);
      renderComposer();
    }
    // Another reply of this conversation cut off by a reload: look for it next.
    const cut = conv.messages.find((m) => m.role === "assistant" && m !== reply && !live.get(m) && ["streaming", "waiting", "interrupted"].includes(m.state));
    const asked = cut && conv.messages.find((m) => m.role === "user" && m.id === cut.id);
    if (asked && outcome.kind !== "refused") { converse(conv, asked, cut, { poll: true }); return; }
    const next = (queues.get(conv.id) || []).shift();
    if (next && outcome.kind !== "refused") start(conv, next);
    else if (next) { // refused: the queued ones wait in the thread; the first goes next time
      queues.get(conv.id).unshift(next);
    }
  }

  /** Starts the exchange of a user message already in `conv.messages`. */
  function start(conv, userMsg) {
    const reply = { role: "assistant", id: userMsg.id, text: "", tools: [], state: "streaming", error: "", retry: "" };
    userMsg.state = "sending";
    const at = conv.messages.indexOf(userMsg);
    conv.messages.splice(at + 1, 0, reply);
    probe.sent += 1;
    save();
    if (conv.id === activeId) renderThread();
    converse(conv, userMsg, reply);
  }

  function submit() {
    const input = $("input");
    const files = pending;
    const text = input.value.trim() || (files.length ? `(sent ${files.length} file${files.length === 1 ? "" : "s"})` : "");
    const conv = current();
    if (!text || !conv) return;
    input.value = "";
    pending = [];
    renderAttachments();
    autosize();
    showNotice("");
    const userMsg = { role: "user", text, id: uid("m-"), state: "queued" };
    if (files.length) {
      userMsg.files = files.map((f) => ({ name: f.name, preview: f.data.length <= KEEP_PREVIEW ? f.data : "" }));
      payloads.set(userMsg, files.map(({ name, content_type, data }) => ({ name, content_type, data })));
    }
    if (!conv.messages.length) conv.title = text.length > 28 ? `${text.slice(0, 27)}…` : text;
    conv.messages.push(userMsg);
    if (busy.has(conv.id)) { // one reply at a time: this one is sent when it is done
      if (!queues.has(conv.id)) queues.set(conv.id, []);
      queues.get(conv.id).push(userMsg);
      save();
      renderTabs();
      const thread = $("thread");
      thread.append(messageNode(userMsg));
      thread.scrollTop = thread.scrollHeight;
      return;
    }
    renderTabs();
    start(conv, userMsg);
  }

  /** The files waiting to be sent, as chips above the box (× takes one away). */
  function renderAttachments() {
    const box = $("attachments");
    box.replaceChildren(...pending.map((f, i) => {
      const chip = el("span", "chip-file");
      if (f.content_type.startsWith("image/")) {
        const img = el("img");
        img.src = f.data;
        img.alt = f.name;
        chip.append(img);
      } else {
        chip.append(el("span", "kind", (f.name.split(".").pop() || "file").toUpperCase()));
      }
      chip.append(el("span", "name", f.name));
      const drop = el("button", "", "×");
      drop.type = "button";
      drop.title = `Remove ${f.name}`;
      drop.addEventListener("click", () => { pending.splice(i, 1); renderAttachments(); });
      chip.append(drop);
      return chip;
    }));
    box.hidden = !pending.length;
  }

  /** Reads files (picked, pasted or dropped) into `pending`, as data: URLs. */
  function addFiles(list) {
    for (const file of list) {
      const reader = new FileReader();
      reader.onload = () => {
        const name = file.name || `pasted.${(file.type.split("/")[1] || "bin").replace("jpeg", "jpg")}`;
        pending.push({ name, content_type: file.type || "", data: String(reader.result), size: file.size });
        renderAttachments();
      };
      reader.onerror = () => showNotice(`Could not read ${file.name}.`);
      reader.readAsDataURL(file);
    }
  }

  function stopReply() {
    const conv = current();
    if (!conv) return;
    for (const m of conv.messages) {
      const work = m.role === "assistant" && live.get(m);
      if (!work || !["streaming", "waiting", "interrupted"].includes(m.state)) continue;
      work.stopped = true;
      if (work.controller) work.controller.abort();
      if (work.wake) work.wake();
    }
  }

  /** Retry: the same message_id when no reply is stored (answered once), else a new message. */
  function retryReply(reply) {
    const conv = convs.find((c) => c.messages.includes(reply));
    if (!conv) return;
    const userMsg = conv.messages.find((m) => m.role === "user" && m.id === reply.id);
    if (!userMsg) return;
    if (reply.retry === "new") {
      $("input").value = userMsg.text;
      submit();
      return;
    }
    if (busy.has(conv.id)) { showNotice("Wait for the current reply (or Stop it) before retrying."); return; }
    Object.assign(reply, { text: "", tools: [], state: "streaming", error: "", retry: "", status: "" });
    probe.sent += 1;
    refresh(conv, reply);
    converse(conv, userMsg, reply);
  }

  // ---- the server's copy of the conversations ----------------------------------------
  /** Rebuilds `conv.messages` from the server's history, keeping what only this tab has. */
  function merge(conv, serverMessages) {
    const key = (m) => `${m.role}:${m.id}`;
    const local = new Map(conv.messages.map((m) => [key(m), m]));
    const out = [];
    const seen = new Set();
    for (const sm of serverMessages) {
      if (!sm || !sm.message_id || (sm.role !== "user" && sm.role !== "assistant")) continue;
      const k = `${sm.role}:${sm.message_id}`;
      if (seen.has(k)) continue;
      seen.add(k);
      let m = local.get(k);
      if (sm.role === "user") {
        m = m || { role: "user", id: sm.message_id };
        m.text = typeof sm.content === "string" ? sm.content : m.text || "";
        m.state = "sent";
      } else {
        m = m || { role: "assistant", id: sm.message_id, text: "", tools: [] };
        if (!live.get(m) || !["streaming", "waiting", "interrupted"].includes(m.state)) stored(m, sm);
      }
      out.push(m);
    }
    // Questions the server has not answered yet: their replies are on the way.
    const pending = [];
    for (let i = 0; i < out.length; i++) {
      const m = out[i];
      if (m.role !== "user" || seen.has(`assistant:${m.id}`)) continue;
      let reply = local.get(`assistant:${m.id}`);
      if (!reply || ["done", "error"].includes(reply.state)) reply = { role: "assistant", id: m.id, text: "", tools: [], state: "waiting", error: "", retry: "" };
      out.splice(i + 1, 0, reply);
      seen.add(`assistant:${m.id}`);
      if (!live.get(reply) || !["streaming", "waiting", "interrupted"].includes(reply.state)) pending.push([m, reply]);
    }
    // What only this tab has (queued, or never accepted) stays, after the server's.
    for (const m of conv.messages) if (!seen.has(key(m))) out.push(m);
    conv.messages = out;
    return pending;
  }

  /** Loads one conversation's messages from the server (not while this tab streams it). */
  async function loadConversation(conv) {
    if (!conv || busy.has(conv.id) || !(conv.synced || conv.messages.length)) return;
    let res;
    try { res = await api(`/v1/conversations/${encodeURIComponent(conv.id)}`); } catch { return; }
    if (busy.has(conv.id) || !convs.includes(conv)) return;
    if (gone(res) && conv.synced && !conv.messages.some((m) => m.state === "queued")) {
      // Deleted elsewhere (another tab, the API).
      const i = convs.indexOf(conv);
      convs.splice(i, 1);
      if (activeId === conv.id) activeId = convs.length ? convs[Math.max(0, i - 1)].id : "";
      if (!convs.length) { newConversation(); return; }
      save(); renderTabs(); renderThread();
      return;
    }
    if (!res.ok || !res.body || !Array.isArray(res.body.messages)) return;
    probe.loads += 1;
    conv.synced = true;
    const pending = merge(conv, res.body.messages);
    save();
    renderTabs();
    if (conv.id === activeId) renderThread();
    const first = pending[0];
    if (first) converse(conv, first[0], first[1], { poll: true }); // answered in order: one at a time
  }

  let syncing = null;
  /** The conversation list from the server: adds what other tabs or clients started. */
  async function syncList() {
    let res;
    try { res = await api(`/v1/conversations?user_id=${encodeURIComponent(currentUser())}`); } catch { return; }
    if (res.status === 401 && getToken()) {
      showNotice("The API token of this tab is wrong (the server did not accept it): set the right one with the Token button.");
    }
    if (!res.ok || !res.body || !Array.isArray(res.body.conversations)) return; // cache only
    probe.listed = true;
    const server = res.body.conversations.filter((c) => c && c.conversation_id);
    const ids = new Set(server.map((c) => c.conversation_id));
    // Gone from the server (deleted elsewhere): closed here too, unless this tab is using it.
    convs = convs.filter((c) => ids.has(c.id) || !c.synced || busy.has(c.id));
    for (const s of [...server].reverse()) { // newest first from the server; tabs open left to right
      if (removed.has(s.conversation_id)) continue;
      let c = convs.find((x) => x.id === s.conversation_id);
      if (!c) {
        c = { id: s.conversation_id, title: "Conversation", messages: [] };
        convs.push(c);
      }
      c.synced = true;
      if (typeof s.title === "string" && s.title.trim()) c.title = s.title.length > 28 ? `${s.title.slice(0, 27)}…` : s.title;
      if (Array.isArray(s.messages) && !busy.has(c.id) && s.messages.length && typeof s.messages[0] === "object") merge(c, s.messages);
    }
    if (placeholder && server.length && !placeholder.messages.length) { // the server's instead
      convs = convs.filter((c) => c !== placeholder);
      if (activeId === placeholder.id) activeId = ids.has(wanted) ? wanted : server[0].conversation_id;
    }
    placeholder = null;
    if (!current()) activeId = convs.length ? convs[convs.length - 1].id : "";
    if (!convs.length) { newConversation(); return; }
    save();
    renderTabs();
    renderThread();
  }
  async function sync() {
    if (syncing) return syncing;
    syncing = (async () => {
      try { await syncList(); await loadConversation(current()); } finally { syncing = null; }
    })();
    return syncing;
  }

  /** Resolves true when the user saved a token, false when they cancelled. */
  function askToken(problem) {
    return new Promise((resolve) => {
      const dialog = $("token-dialog");
      $("token-input").value = getToken();
      $("token-error").textContent = problem || "";
      $("token-error").hidden = !problem;
      dialog.returnValue = ""; // Esc keeps the last value otherwise
      dialog.addEventListener("close", () => {
        const ok = dialog.returnValue === "save" && $("token-input").value.trim() !== "";
        if (ok) setToken($("token-input").value.trim());
        resolve(ok);
      }, { once: true });
      if (!dialog.open) dialog.showModal();
    });
  }

  /** Who the token acts as (`GET /v1/me`): a user key's user, or this browser's id. */
  async function whoAmI() {
    try {
      const res = await api("/v1/me");
      keyUser = res.ok && res.body && typeof res.body.user_id === "string" && res.body.user_id ? res.body.user_id : "";
    } catch { /* unreachable: keep the id */ }
    $("who").textContent = `you are ${currentUser()}`;
  }

  async function checkHealth() {
    try {
      const res = await fetch("/healthz", { cache: "no-store", signal: AbortSignal.timeout(HEALTH_TIMEOUT_MS) });
      const body = await res.json().catch(() => ({}));
      if (body.demo && typeof body.notice === "string" && body.notice) {
        const text = body.notice.replace(/^demo mode[:.]\s*/i, "");
        $("demo-text").textContent = text.charAt(0).toUpperCase() + text.slice(1);
      }
      $("demo-banner").hidden = !body.demo;
    } catch { /* the first message will say the server is unreachable */ }
    try { // the tools' names, to write them the same way everywhere on the page
      const info = await api("/v1/info");
      if (info.ok && info.body && Array.isArray(info.body.tools)) info.body.tools.forEach(noteTool);
      if (knownServers.size && current()) renderThread();
    } catch { /* names are shown as the model wrote them */ }
  }

  function autosize() {
    const input = $("input");
    input.style.height = "auto";
    input.style.height = `${Math.min(input.scrollHeight, 200)}px`;
  }

  // ---- start -------------------------------------------------------------------------
  $("composer").addEventListener("submit", (ev) => { ev.preventDefault(); submit(); });
  $("input").addEventListener("keydown", (ev) => {
    if (ev.key === "Enter" && !ev.shiftKey && !ev.isComposing) { ev.preventDefault(); submit(); }
  });
  $("input").addEventListener("input", autosize);
  $("attach").addEventListener("click", () => $("file-input").click());
  $("file-input").addEventListener("change", (ev) => { addFiles(ev.target.files); ev.target.value = ""; });
  $("input").addEventListener("paste", (ev) => {
    const files = ev.clipboardData && ev.clipboardData.files;
    if (files && files.length) { ev.preventDefault(); addFiles(files); }
  });
  document.addEventListener("dragover", (ev) => {
    if (ev.dataTransfer && [...ev.dataTransfer.types].includes("Files")) { ev.preventDefault(); $("composer").classList.add("dropping"); }
  });
  document.addEventListener("dragleave", () => $("composer").classList.remove("dropping"));
  document.addEventListener("drop", (ev) => {
    $("composer").classList.remove("dropping");
    if (ev.dataTransfer && ev.dataTransfer.files.length) { ev.preventDefault(); addFiles(ev.dataTransfer.files); }
  });
  $("new-tab").addEventListener("click", newConversation);
  $("stop").addEventListener("click", stopReply);
  $("token-button").addEventListener("click", () => askToken("").then(async (ok) => { if (ok) { await whoAmI(); sync(); } }));
  $("thread").addEventListener("click", (ev) => {
    const button = ev.target instanceof Element ? ev.target.closest("button.copy") : null;
    if (button) copyCode(button);
  });
  $("who").textContent = `you are ${currentUser()}`;
  // Another tab of this browser started a conversation: show its tab here too.
  window.addEventListener("storage", (ev) => {
    if (ev.key !== CONVS_KEY) return;
    const mine = new Set(convs.map((c) => c.id));
    const added = store.get(CONVS_KEY, []).filter((c) => c && c.id && Array.isArray(c.messages) && !mine.has(c.id) && !removed.has(c.id));
    if (!added.length) return;
    convs.push(...added);
    renderTabs();
  });
  let lastSync = 0;
  document.addEventListener("visibilitychange", () => {
    if (document.visibilityState !== "visible" || Date.now() - lastSync < 2000) return;
    lastSync = Date.now();
    sync();
  });

  // Replies cut off by a reload are looked for in the server's history (never re-sent:
  // that could run a tool twice); messages that were queued are sent once it is done.
  const resume = [];
  for (const conv of convs) {
    conv.messages = conv.messages.filter((m) => m && (m.role === "user" || m.role === "assistant"));
    for (let i = 0; i < conv.messages.length; i++) {
      const m = conv.messages[i];
      if (m.role === "user" && m.state === "queued") {
        if (!queues.has(conv.id)) queues.set(conv.id, []);
        queues.get(conv.id).push(m);
      }
      if (m.role === "assistant" && ["streaming", "waiting", "interrupted"].includes(m.state)) {
        const q = conv.messages.find((u) => u.role === "user" && u.id === m.id);
        if (q) { m.status = ""; resume.push([conv, q, m]); } else m.state = "lost";
      }
    }
  }
  const wanted = activeId; // the server may have it when the cache does not
  let placeholder = null; // an empty chat opened only because the cache had none
  if (!convs.length || !current()) {
    if (!convs.length) { placeholder = { id: uid("web-"), title: "New chat", messages: [] }; convs.push(placeholder); }
    activeId = convs[convs.length - 1].id;
  }
  save();
  renderTabs();
  renderThread();
  const resumed = new Set();
  for (const [conv, userMsg, reply] of resume) {
    if (resumed.has(conv.id)) continue; // one at a time per conversation, in order
    resumed.add(conv.id);
    converse(conv, userMsg, reply, { poll: true });
  }
  for (const [id, queued] of queues) {
    const conv = convs.find((c) => c.id === id);
    if (conv && !busy.has(id) && queued.length) start(conv, queued.shift());
  }
  checkHealth();
  whoAmI().then(sync);
  $("input").focus();
})();

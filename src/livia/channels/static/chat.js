// Livia's web chat: conversations in tabs, replies streamed from POST /v1/chat as SSE.
"use strict";
(() => {
  const TOKEN_KEY = "livia.apiToken";
  const USER_KEY = "livia.userId";
  const CONVS_KEY = "livia.conversations";
  const ACTIVE_KEY = "livia.activeConversation";
  const IDLE_TIMEOUT_MS = 180000; // abandon a reply stream silent for this long
  const HEALTH_TIMEOUT_MS = 5000;
  const MAX_SAVED_MESSAGES = 200; // per conversation, in localStorage

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

  // ---- state -------------------------------------------------------------------------
  let userId = store.get(USER_KEY, "");
  if (!userId) { userId = uid("web-"); store.set(USER_KEY, userId); }
  /** @type {{id: string, title: string, messages: object[], busy?: boolean}[]} */
  let convs = store.get(CONVS_KEY, []).filter((c) => c && c.id && Array.isArray(c.messages));
  let activeId = store.get(ACTIVE_KEY, "");
  const nodes = new WeakMap(); // message -> its DOM node (active tab only)
  const probe = { sent: 0, replies: 0, errors: 0, lastEvent: "" };
  window.liviaChat = probe; // read by the browser tests

  function save() {
    store.set(CONVS_KEY, convs.map((c) => ({ id: c.id, title: c.title, messages: c.messages.slice(-MAX_SAVED_MESSAGES) })));
    store.set(ACTIVE_KEY, activeId);
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

  // ---- rendering ---------------------------------------------------------------------
  const INLINE = /(`[^`\n]+`|\*\*[^*\n]+\*\*|\[[^\]\n]+\]\(https?:\/\/[^)\s]+\)|https?:\/\/[^\s<>()]+[^\s<>().,;:!?'"])/g;

  /** Plain text with `code`, **bold** and links, as DOM nodes (never innerHTML). */
  function inline(text) {
    const out = [];
    let last = 0;
    for (const m of text.matchAll(INLINE)) {
      if (m.index > last) out.push(document.createTextNode(text.slice(last, m.index)));
      const t = m[0];
      if (t.startsWith("`")) out.push(el("code", "", t.slice(1, -1)));
      else if (t.startsWith("**")) out.push(el("strong", "", t.slice(2, -2)));
      else {
        const link = t.startsWith("[") ? /^\[([^\]]+)\]\((.+)\)$/.exec(t) : [t, t, t];
        const a = el("a", "", link[1]);
        a.href = link[2];
        a.target = "_blank";
        a.rel = "noopener noreferrer";
        out.push(a);
      }
      last = m.index + t.length;
    }
    if (last < text.length) out.push(document.createTextNode(text.slice(last)));
    return out;
  }

  /** A light Markdown subset: ``` fences, paragraphs, inline code, bold and links. */
  function markdown(text) {
    const out = [];
    const parts = text.split(/```[^\n]*\n?/);
    parts.forEach((part, i) => {
      if (i % 2 === 1) {
        const pre = el("pre");
        pre.append(el("code", "", part.replace(/\n$/, "")));
        out.push(pre);
        return;
      }
      for (const para of part.split(/\n{2,}/)) {
        if (!para.trim()) continue;
        const p = el("p");
        p.append(...inline(para.replace(/^\n+|\n+$/g, "")));
        out.push(p);
      }
    });
    return out;
  }

  function renderTabs() {
    const tabs = $("tabs");
    tabs.replaceChildren(...convs.map((c) => {
      const tab = el("div", "tab");
      tab.setAttribute("role", "tab");
      tab.setAttribute("aria-selected", String(c.id === activeId));
      tab.dataset.conversation = c.id;
      tab.title = c.title;
      if (c.busy) tab.append(el("span", "busy"));
      tab.append(el("span", "title", c.title));
      const close = el("button", "close", "×");
      close.type = "button";
      close.title = "Close this conversation";
      close.addEventListener("click", (ev) => { ev.stopPropagation(); closeConversation(c.id); });
      tab.append(close);
      tab.addEventListener("click", () => { activeId = c.id; save(); renderTabs(); renderThread(); });
      return tab;
    }));
  }

  function closeConversation(id) {
    const i = convs.findIndex((c) => c.id === id);
    if (i < 0) return;
    convs.splice(i, 1);
    if (activeId === id) activeId = convs.length ? convs[Math.max(0, i - 1)].id : "";
    if (!convs.length) { newConversation(); return; }
    save();
    renderTabs();
    renderThread();
  }

  function messageNode(msg) {
    const node = el("div", `msg ${msg.role}`);
    if (msg.role === "assistant") node.append(el("span", "logo", "L"));
    const bubble = el("div", "bubble");
    if (msg.role === "assistant") bubble.append(el("div", "tools"), el("div", "content"), el("div", "error"));
    node.append(bubble);
    nodes.set(msg, node);
    updateMessage(msg);
    return node;
  }

  function updateMessage(msg) {
    const node = nodes.get(msg);
    if (!node) return;
    node.dataset.state = msg.state || "done";
    const bubble = node.querySelector(".bubble");
    if (msg.role === "user") { bubble.textContent = msg.text; return; }
    bubble.querySelector(".tools").replaceChildren(...(msg.tools || []).map((t) => {
      const row = el("div", "tool");
      row.dataset.state = t.state;
      row.append(
        el("span", "icon", t.state === "running" ? "↻" : t.state === "ok" ? "✓" : "✗"),
        el("span", "name", t.tool),
        el("span", "summary", t.state === "running" ? "running…" : t.summary || (t.state === "ok" ? "done" : "failed")),
      );
      row.title = t.summary || t.tool;
      return row;
    }));
    bubble.querySelector(".content").replaceChildren(...markdown(msg.text || ""));
    const err = bubble.querySelector(".error");
    err.textContent = msg.error || "";
    err.hidden = !msg.error;
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
    $("send").disabled = !!(conv && conv.busy);
  }

  let frame = 0;
  function refresh(conv, msg) {
    if (conv.id !== activeId || frame) return;
    frame = requestAnimationFrame(() => {
      frame = 0;
      const thread = $("thread");
      const atBottom = thread.scrollHeight - thread.scrollTop - thread.clientHeight < 80;
      updateMessage(msg);
      if (atBottom) thread.scrollTop = thread.scrollHeight;
    });
  }

  // ---- talking to the server ---------------------------------------------------------
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

  /** The message of an error body: {"error": {type, message}}, {type, message} or a string. */
  const errorText = (body, status) => {
    const e = body && typeof body === "object" && "error" in body ? body.error : body;
    if (e && typeof e === "object" && (e.message || e.type)) return String(e.message || e.type);
    if (typeof e === "string" && e) return e;
    return `the server answered HTTP ${status}`;
  };

  function apply(reply, event, data) {
    probe.lastEvent = event;
    const kind = event !== "message" ? event : data.type || data.kind || "delta";
    if (kind === "delta" || kind === "text") {
      reply.text += data.text || "";
    } else if (kind === "tool_started") {
      reply.tools.push({ id: data.call_id || "", tool: data.tool || "tool", state: "running", summary: "" });
    } else if (kind === "tool_finished") {
      const t = reply.tools.find((x) => (data.call_id ? x.id === data.call_id : x.tool === data.tool && x.state === "running"));
      const entry = t || { id: data.call_id || "", tool: data.tool || "tool" };
      entry.state = data.ok === false ? "failed" : "ok";
      entry.summary = data.summary || "";
      if (!t) reply.tools.push(entry);
    } else if (kind === "done") {
      if (typeof data.reply === "string" && data.reply) reply.text = data.reply;
      else if (typeof data.text === "string" && data.text) reply.text = data.text;
      if (data.error) reply.error = errorText(data.error, 500);
      reply.state = reply.error ? "error" : "done";
      return true;
    } else if (kind === "error") {
      reply.error = errorText(data, 500);
      reply.state = "error";
      return true;
    }
    return false;
  }

  async function exchange(conv, userMsg, reply) {
    const headers = { "Content-Type": "application/json", Accept: "text/event-stream" };
    const token = getToken();
    if (token) headers.Authorization = `Bearer ${token}`;
    const controller = new AbortController();
    let timer = setTimeout(() => controller.abort(), IDLE_TIMEOUT_MS);
    const activity = () => { clearTimeout(timer); timer = setTimeout(() => controller.abort(), IDLE_TIMEOUT_MS); };
    try {
      const res = await fetch("/v1/chat", {
        method: "POST",
        headers,
        body: JSON.stringify({ conversation_id: conv.id, user_id: userId, text: userMsg.text, message_id: userMsg.id }),
        signal: controller.signal,
      });
      if (res.status === 401) return "unauthorized";
      const type = res.headers.get("content-type") || "";
      if (!res.ok) {
        const body = type.includes("json") ? await res.json().catch(() => null) : null;
        reply.error = errorText(body, res.status);
        reply.state = "error";
        return "error";
      }
      if (!type.includes("text/event-stream")) { // a server that answered in one piece
        const body = await res.json();
        apply(reply, "done", body);
        return "done";
      }
      for await (const { event, data } of sse(res, activity)) {
        if (apply(reply, event, data)) break;
        refresh(conv, reply);
      }
      if (reply.state === "streaming") {
        reply.state = "error";
        reply.error = "the connection closed before the reply finished; send the message again";
      }
      return reply.state;
    } catch (err) {
      reply.state = "error";
      reply.error = controller.signal.aborted
        ? "no answer from the server for a long time; try again"
        : `could not reach Livia (${err && err.message ? err.message : err}); is the server running?`;
      return "error";
    } finally {
      clearTimeout(timer);
    }
  }

  async function converse(conv, userMsg, reply) {
    conv.busy = true;
    renderTabs();
    if (conv.id === activeId) $("send").disabled = true;
    let outcome = await exchange(conv, userMsg, reply);
    if (outcome === "unauthorized" && await askToken()) {
      outcome = await exchange(conv, userMsg, reply); // same message_id: answered once
    }
    if (outcome === "unauthorized") {
      reply.state = "error";
      reply.error = "this server needs an API token; use the Token button";
    }
    if (reply.state === "error") probe.errors += 1; else probe.replies += 1;
    conv.busy = false;
    save();
    renderTabs();
    if (conv.id === activeId) { $("send").disabled = false; refresh(conv, reply); }
  }

  function submit() {
    const input = $("input");
    const text = input.value.trim();
    const conv = current();
    if (!text || !conv || conv.busy) return;
    input.value = "";
    autosize();
    const userMsg = { role: "user", text, id: uid("m-") };
    const reply = { role: "assistant", text: "", tools: [], state: "streaming", error: "" };
    if (!conv.messages.length) conv.title = text.length > 28 ? `${text.slice(0, 27)}…` : text;
    conv.messages.push(userMsg, reply);
    probe.sent += 1;
    save();
    renderTabs();
    const thread = $("thread");
    if (thread.querySelector(".empty")) thread.replaceChildren();
    thread.append(messageNode(userMsg), messageNode(reply));
    thread.scrollTop = thread.scrollHeight;
    converse(conv, userMsg, reply);
  }

  /** Resolves true when the user saved a token, false when they cancelled. */
  function askToken() {
    return new Promise((resolve) => {
      const dialog = $("token-dialog");
      $("token-input").value = getToken();
      dialog.returnValue = ""; // Esc keeps the last value otherwise
      dialog.addEventListener("close", () => {
        const saved = dialog.returnValue === "save" && $("token-input").value.trim() !== "";
        if (saved) setToken($("token-input").value.trim());
        resolve(saved);
      }, { once: true });
      if (!dialog.open) dialog.showModal();
    });
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
  $("new-tab").addEventListener("click", newConversation);
  $("token-button").addEventListener("click", () => askToken());
  $("who").textContent = `you are ${userId}`;

  // Replies cut off by a reload are asked for again with the same message_id: the server
  // answers each message once, so this returns the stored (or in-progress) reply.
  const resume = [];
  for (const conv of convs) {
    conv.busy = false;
    const n = conv.messages.length;
    const last = conv.messages[n - 1];
    if (last && last.role === "assistant" && last.state === "streaming" && n >= 2) {
      Object.assign(last, { text: "", tools: [], error: "" });
      resume.push([conv, conv.messages[n - 2], last]);
    }
  }
  if (!convs.length || !current()) {
    if (!convs.length) convs.push({ id: uid("web-"), title: "New chat", messages: [] });
    activeId = convs[convs.length - 1].id;
  }
  save();
  renderTabs();
  renderThread();
  for (const [conv, userMsg, reply] of resume) converse(conv, userMsg, reply);
  checkHealth();
  $("input").focus();
})();

// Livia's live dashboard: polls /stats every second and draws the history on <canvas>.
"use strict";
(() => {
  const TOKEN_KEY = "livia.apiToken";
  const POLL_MS = 1000;
  const FETCH_TIMEOUT_MS = 5000;
  const HISTORY_S = 120; // seconds of history kept and drawn
  const PALETTE = ["#5b5bd6", "#1f9d62", "#d98a00", "#d2374b", "#1c8fd1", "#a35bd6", "#3aa39b", "#c0592b"];
  const LIMIT_NAMES = {
    max_concurrent: "slots in use",
    requests_per_minute: "requests / min",
    requests_per_hour: "requests / hour",
    tokens_per_minute: "tokens / min",
  };

  const $ = (id) => document.getElementById(id);
  const el = (tag, cls, text) => {
    const node = document.createElement(tag);
    if (cls) node.className = cls;
    if (text !== undefined) node.textContent = text;
    return node;
  };
  const num = (v) => (typeof v === "number" && Number.isFinite(v) ? v : 0);
  const fmtInt = (v) => Math.round(num(v)).toLocaleString("en-US");
  const fmtRate = (v) => (v >= 10 ? v.toFixed(0) : v.toFixed(1));
  const fmtPct = (v) => `${(num(v) * 100).toFixed(v >= 0.999 || v === 0 ? 0 : 1)}%`;
  const fmtSec = (v) => {
    const s = num(v);
    if (s === 0) return "–";
    return s < 1 ? `${(s * 1000).toFixed(0)} ms` : `${s.toFixed(s < 10 ? 2 : 1)} s`;
  };
  const cssVar = (name) => getComputedStyle(document.documentElement).getPropertyValue(name).trim();

  const maxConcurrent = (s) => num(s.max_concurrent) || num(s.limits?.max_concurrent?.limit);

  // The API token lives in sessionStorage (this tab only, gone when it closes), not in
  // localStorage; a token an older version left there is moved over once.
  let memoryToken = "";
  function getToken() {
    try {
      const old = localStorage.getItem(TOKEN_KEY);
      if (old !== null) {
        localStorage.removeItem(TOKEN_KEY);
        if (!sessionStorage.getItem(TOKEN_KEY)) sessionStorage.setItem(TOKEN_KEY, old);
      }
      return sessionStorage.getItem(TOKEN_KEY) || memoryToken;
    } catch { return memoryToken; }
  }
  function setToken(value) {
    memoryToken = value;
    try { sessionStorage.setItem(TOKEN_KEY, value); } catch { /* storage off: keep for this page only */ }
  }

  /** A small time-series line chart: fixed time window, auto or percent y-axis. */
  class LineChart {
    constructor(canvas, { percent = false, minMax = 1 } = {}) {
      this.canvas = canvas;
      this.percent = percent;
      this.minMax = minMax;
    }

    /** A round axis maximum of at least `v` that splits into 4 round ticks. */
    static niceMax(v) {
      if (v <= 4) return 4;
      const raw = v / 4;
      const p = 10 ** Math.floor(Math.log10(raw));
      for (const m of [1, 1.5, 2, 2.5, 3, 4, 5, 6, 8, 10]) {
        const step = m * p;
        if (step >= raw && (step >= 1 ? Number.isInteger(step) : true)) return step * 4;
      }
      return 40 * p;
    }

    /** times: server seconds; series: [{color, values, dashed?}]; ref: optional horizontal line. */
    draw(times, series, ref) {
      const c = this.canvas;
      const dpr = window.devicePixelRatio || 1;
      const w = c.clientWidth || 300;
      const h = c.clientHeight || 150;
      if (c.width !== Math.round(w * dpr) || c.height !== Math.round(h * dpr)) {
        c.width = Math.round(w * dpr);
        c.height = Math.round(h * dpr);
      }
      const g = c.getContext("2d");
      g.setTransform(dpr, 0, 0, dpr, 0, 0);
      g.clearRect(0, 0, w, h);
      const pad = { l: 40, r: 10, t: 8, b: 20 };
      const pw = w - pad.l - pad.r;
      const ph = h - pad.t - pad.b;
      let max = this.minMax;
      for (const s of series) for (const v of s.values) max = Math.max(max, num(v));
      if (ref) max = Math.max(max, ref.value);
      max = this.percent ? Math.max(100, Math.ceil(max / 25) * 25) : LineChart.niceMax(max * 1.05);

      const grid = cssVar("--grid") || "#eee";
      const muted = cssVar("--muted") || "#888";
      g.font = "11px system-ui, 'DejaVu Sans', sans-serif";
      g.fillStyle = muted;
      g.strokeStyle = grid;
      g.lineWidth = 1;
      g.textAlign = "right";
      g.textBaseline = "middle";
      for (let i = 0; i <= 4; i++) {
        const y = pad.t + ph - (ph * i) / 4;
        g.beginPath();
        g.moveTo(pad.l, Math.round(y) + 0.5);
        g.lineTo(pad.l + pw, Math.round(y) + 0.5);
        g.stroke();
        const v = (max * i) / 4;
        g.fillText(this.percent ? `${v.toFixed(0)}%` : (v % 1 ? v.toFixed(1) : String(v)), pad.l - 6, y);
      }
      g.textBaseline = "top";
      g.textAlign = "left";
      // The x-axis spans what was seen so far (at least 20 s), up to HISTORY_S.
      const span = Math.min(HISTORY_S, Math.max(20, times.length ? times[times.length - 1] - times[0] : 0));
      g.fillText(span >= 60 ? `−${(span / 60).toFixed(span % 60 ? 1 : 0)} min` : `−${Math.round(span)} s`, pad.l, pad.t + ph + 5);
      g.textAlign = "right";
      g.fillText("now", pad.l + pw, pad.t + ph + 5);

      const now = times.length ? times[times.length - 1] : 0;
      const xOf = (t) => pad.l + pw * (1 - Math.min(span, now - t) / span);
      const yOf = (v) => pad.t + ph - (ph * Math.min(num(v), max)) / max;

      if (ref) {
        g.save();
        g.setLineDash([4, 4]);
        g.strokeStyle = muted;
        g.beginPath();
        g.moveTo(pad.l, yOf(ref.value));
        g.lineTo(pad.l + pw, yOf(ref.value));
        g.stroke();
        g.textAlign = "left";
        g.textBaseline = "bottom";
        g.fillText(ref.label, pad.l + 4, yOf(ref.value) - 2);
        g.restore();
      }

      let points = 0;
      g.lineJoin = "round";
      for (const s of series) {
        if (!s.values.length) continue;
        g.beginPath();
        s.values.forEach((v, i) => {
          const x = xOf(times[i]);
          const y = yOf(v);
          if (i === 0) g.moveTo(x, y); else g.lineTo(x, y);
        });
        g.strokeStyle = s.color;
        g.lineWidth = 2;
        g.setLineDash(s.dashed ? [5, 4] : []);
        g.stroke();
        if (!s.dashed) {
          g.lineTo(xOf(times[s.values.length - 1]), pad.t + ph);
          g.lineTo(xOf(times[0]), pad.t + ph);
          g.closePath();
          g.globalAlpha = 0.08;
          g.fillStyle = s.color;
          g.fill();
          g.globalAlpha = 1;
        }
        points += s.values.length;
      }
      g.setLineDash([]);
      c.dataset.points = String(points);
      c.dataset.draws = String(Number(c.dataset.draws || 0) + 1);
    }
  }

  function legend(container, items) {
    container.replaceChildren(...items.map(({ label, color, value }) => {
      const item = el("span");
      const sw = el("span", "swatch");
      sw.style.background = color;
      item.append(sw, `${label} `);
      if (value !== undefined) item.append(el("b", "", value));
      return item;
    }));
  }

  function push(arr, v) {
    arr.push(v);
    if (arr.length > HISTORY_S + 5) arr.shift();
  }

  // ---- state -------------------------------------------------------------------------
  const times = [];
  const conv = { active: [], queued: [] };
  const ups = new Map(); // name -> {color, node, charts, inflight[], waiting[], rps[], windows: Map}
  let prev = null; // {time, totals: {name: total}}
  const charts = {
    throughput: new LineChart($("chart-throughput")),
    conversations: new LineChart($("chart-conversations")),
  };
  const probe = { polls: 0, errors: 0, lastError: "", lastStats: null };
  window.liviaDashboard = probe; // read by the browser tests

  function upstream(name) {
    let u = ups.get(name);
    if (u) return u;
    const node = $("upstream-template").content.firstElementChild.cloneNode(true);
    node.dataset.upstream = name;
    node.querySelector(".up-name").textContent = name;
    $("upstreams").append(node);
    u = {
      color: PALETTE[ups.size % PALETTE.length],
      node,
      load: new LineChart(node.querySelector(".chart-load")),
      windowsChart: new LineChart(node.querySelector(".chart-windows"), { percent: true }),
      // called after this sample's time was recorded: pad the earlier samples with zeros
      inflight: times.slice(0, -1).map(() => 0),
      waiting: times.slice(0, -1).map(() => 0),
      rps: times.slice(0, -1).map(() => 0),
      windows: new Map(),
    };
    ups.set(name, u);
    return u;
  }

  function renderUpstream(name, s, u) {
    const n = u.node;
    const circuit = typeof s.circuit_state === "string" ? s.circuit_state : "closed";
    const badge = n.querySelector(".circuit");
    badge.className = `badge circuit ${circuit}`;
    badge.textContent = `circuit ${circuit.replace("_", "-")}`;
    const max = maxConcurrent(s);
    n.querySelector(".up-summary").textContent =
      `${fmtInt(s.concurrent_requests)}${max ? ` / ${max}` : ""} in flight · ${fmtInt(s.waiting)} waiting · ` +
      `${fmtPct(s.success_rate ?? 1)} success`;
    const err = n.querySelector(".up-error");
    err.hidden = !s.last_error;
    err.textContent = s.last_error ? `last error: ${s.last_error}` : "";
    err.title = s.last_error || "";

    u.load.draw(times, [
      { color: PALETTE[0], values: u.inflight },
      { color: PALETTE[2], values: u.waiting },
    ], max ? { value: max, label: `max ${max}` } : undefined);
    legend(n.querySelector(".legend-load"), [
      { label: "in flight", color: PALETTE[0], value: fmtInt(s.concurrent_requests) },
      { label: "waiting", color: PALETTE[2], value: fmtInt(s.waiting) },
    ]);

    const wseries = [];
    const witems = [];
    let i = 0;
    for (const [lname, values] of u.windows) {
      const color = PALETTE[(i++ + 1) % PALETTE.length];
      wseries.push({ color, values });
      witems.push({ label: LIMIT_NAMES[lname] || lname.replaceAll("_", " "), color, value: `${values[values.length - 1].toFixed(0)}%` });
    }
    u.windowsChart.draw(times, wseries);
    legend(n.querySelector(".legend-windows"), witems.length ? witems : [{ label: "no limits reported", color: "transparent" }]);

    const bars = n.querySelector(".bars");
    const limits = s.limits && typeof s.limits === "object" ? s.limits : {};
    bars.replaceChildren(...Object.entries(limits).map(([lname, w]) => {
      const used = num(w.used);
      const cap = num(w.limit);
      const frac = cap ? Math.min(1, used / cap) : 0;
      const bar = el("div", "bar");
      const label = el("div", "bar-label");
      const windowText = num(w.window_s) ? ` · ${num(w.window_s) >= 3600 ? `${num(w.window_s) / 3600} h` : `${num(w.window_s)} s`} window` : "";
      // A spent window says when it frees (the hour's Zapier quota: "frees 14:02, in 51 min").
      const frees = num(w.frees_in) > 0
        ? ` · frees ${new Date(Date.now() + num(w.frees_in) * 1000).toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" })}, in ${fmtWait(num(w.frees_in))}`
        : "";
      label.append(el("span", "", `${LIMIT_NAMES[lname] || lname}${windowText}${frees}`), el("b", "", `${fmtInt(used)} / ${fmtInt(cap)}`));
      const track = el("div", "track");
      const fill = el("div", `fill${frac >= 1 ? " full" : frac >= 0.8 ? " warn" : ""}`);
      fill.style.width = `${(frac * 100).toFixed(1)}%`;
      track.append(fill);
      bar.append(label, track);
      return bar;
    }));
    if (!bars.childElementCount) bars.append(el("div", "empty", "no limits reported"));

    const rows = [
      ["calls", fmtInt(s.total_requests)],
      ["succeeded", fmtInt(s.successful_requests)],
      ["failed", fmtInt(s.failed_requests)],
      ["attempts", fmtInt(s.attempts ?? s.total_requests)],
      ["retries", fmtInt(s.retries)],
      ["429 answers", fmtInt(s.http_429)],
      ["waited for capacity", `${fmtInt(s.rate_limit_waits)} (${fmtSec(s.total_wait_time)})`],
      ["refused (no capacity)", fmtInt(s.capacity_exhausted)],
      ["latency avg", fmtSec(s.average_response_time)],
      ["p50 · p95 · p99", `${fmtSec(s.latency_p50)} · ${fmtSec(s.latency_p95)} · ${fmtSec(s.latency_p99)}`],
    ];
    n.querySelector(".counters").replaceChildren(...rows.flatMap(([k, v]) => [el("dt", "", k), el("dd", "", v)]));
  }

  function renderTools(tools) {
    const servers = tools && typeof tools === "object" ? (tools.servers && typeof tools.servers === "object" ? tools.servers : tools) : {};
    const entries = Object.entries(servers).filter(([, v]) => v && typeof v === "object");
    $("tools-panel").hidden = entries.length === 0;
    $("tools").replaceChildren(...entries.map(([name, info]) => {
      const state = typeof info.state === "string" ? info.state : (info.connected ?? info.up ?? info.ok) === false ? "down" : "up";
      const good = state === "connected" || state === "up";
      const row = el("div", "tool-row");
      const badge = el("span", `badge ${good ? "closed" : state === "connecting" ? "half_open" : "open"}`, state);
      const count = Array.isArray(info.tools) ? info.tools.length : info.tools;
      const bits = [];
      if (count !== undefined) bits.push(`${count} tools`);
      if (info.transport) bits.push(String(info.transport));
      if (info.api) bits.push(`limits of ${info.api}`);
      if (info.error || info.last_error) bits.push(String(info.error || info.last_error));
      row.append(badge, el("span", "name", name), el("span", "detail", bits.join(" · ")));
      return row;
    }));
  }

  /** Add one /stats sample to the history. */
  function record(stats) {
    const t = num(stats.time) || Date.now() / 1000;
    const upstreams = stats.upstreams && typeof stats.upstreams === "object" ? stats.upstreams : {};
    const totals = {};
    push(times, t);
    for (const [name, s] of Object.entries(upstreams)) {
      const u = upstream(name);
      totals[name] = num(s.total_requests);
      const dt = prev ? t - prev.time : 0;
      const rps = dt > 0 && name in prev.totals ? Math.max(0, (totals[name] - prev.totals[name]) / dt) : 0;
      push(u.rps, rps);
      push(u.inflight, num(s.concurrent_requests));
      push(u.waiting, num(s.waiting));
      const limits = s.limits && typeof s.limits === "object" ? s.limits : {};
      for (const [lname, w] of Object.entries(limits)) {
        if (!u.windows.has(lname)) u.windows.set(lname, times.slice(0, -1).map(() => 0));
        push(u.windows.get(lname), num(w.limit) ? (100 * num(w.used)) / num(w.limit) : 0);
      }
    }
    for (const [name, u] of ups) {
      if (!(name in upstreams)) { u.node.remove(); ups.delete(name); }
    }
    prev = { time: t, totals };
    const c = stats.conversations || {};
    push(conv.active, num(c.active));
    push(conv.queued, num(c.queued));
  }

  /** Draw the page from the history and the latest sample. */
  function paint(stats) {
    const upstreams = stats.upstreams && typeof stats.upstreams === "object" ? stats.upstreams : {};
    const c = stats.conversations || {};
    const list = Object.values(upstreams);
    const sum = (key) => list.reduce((a, s) => a + num(s[key]), 0);
    const ok = sum("successful_requests");
    const failed = sum("failed_requests");
    const rpsAll = [...ups.values()].reduce((a, u) => a + (u.rps[u.rps.length - 1] || 0), 0);
    $("k-rps").textContent = fmtRate(rpsAll);
    $("k-inflight").textContent = fmtInt(sum("concurrent_requests"));
    $("k-inflight-hint").textContent = `of ${fmtInt(list.reduce((a, s) => a + maxConcurrent(s), 0))} slots`;
    $("k-waiting").textContent = fmtInt(sum("waiting"));
    $("k-success").textContent = ok + failed ? fmtPct(ok / (ok + failed)) : "–";
    $("k-success-hint").textContent = `${fmtInt(ok)} ok · ${fmtInt(failed)} failed`;
    $("k-active").textContent = fmtInt(c.active);
    $("k-conv-hint").textContent = `active · ${fmtInt(c.queued)} queued`;
    $("k-answered").textContent = fmtInt(c.answered);
    $("k-failed-hint").textContent = `${fmtInt(c.failed)} failed`;
    $("demo-badge").hidden = !stats.demo;
    renderCoordination(list.length ? list[0].coordination : null);
    if (stats.instance) {
      $("instance-badge").textContent = stats.instance;
      $("instance-badge").hidden = false;
    }

    const names = [...ups.keys()];
    charts.throughput.draw(times, names.map((n) => ({ color: ups.get(n).color, values: ups.get(n).rps })));
    legend($("legend-throughput"), names.map((n) => {
      const r = ups.get(n).rps;
      return { label: n, color: ups.get(n).color, value: `${fmtRate(r[r.length - 1] || 0)}/s` };
    }));
    charts.conversations.draw(times, [
      { color: PALETTE[0], values: conv.active },
      { color: PALETTE[2], values: conv.queued },
    ]);
    legend($("legend-conversations"), [
      { label: "active", color: PALETTE[0], value: fmtInt(c.active) },
      { label: "queued", color: PALETTE[2], value: fmtInt(c.queued) },
    ]);
    for (const [name, s] of Object.entries(upstreams)) renderUpstream(name, s, ups.get(name));
    renderTools(stats.tools);
  }

  function fmtWait(seconds) {
    return seconds < 90 ? `${Math.ceil(seconds)} s` : `${Math.ceil(seconds / 60)} min`;
  }

  /** Where the limits are kept: said plainly, and loudly when Redis is away. */
  function renderCoordination(co) {
    const badge = $("coordination-badge");
    if (!co || !co.backend || co.backend === "memory") { badge.hidden = true; return; }
    const n = num(co.replicas);
    const texts = {
      shared: `limits shared via ${co.backend}${n > 1 ? ` · ${n} replicas` : ""}`,
      local: `${co.backend} unreachable: this replica keeps 1/${Math.max(1, n)} of each limit`,
      waiting: `${co.backend} unreachable: calls wait for it`,
    };
    badge.textContent = texts[co.mode] || `limits: ${co.mode}`;
    badge.className = `badge coordination ${co.mode}`;
    badge.hidden = false;
    probe.coordination = co.mode;
  }

  // ---- the deployment: every live replica (from /stats/deployment) ---------------------
  let deploymentPolls = 0;

  function fmtAge(seconds) {
    const s = Math.max(0, Math.round(num(seconds)));
    if (s < 90) return `${s} s`;
    if (s < 5400) return `${Math.round(s / 60)} min`;
    return `${(s / 3600).toFixed(1)} h`;
  }

  function renderReplicas(dep) {
    const replicas = (dep && dep.replicas) || [];
    $("replicas-panel").hidden = replicas.length === 0;
    const body = $("replicas");
    body.textContent = "";
    const now = Date.now() / 1000;
    const cell = (tr, text) => { const td = document.createElement("td"); td.textContent = text; tr.appendChild(td); };
    for (const r of replicas) {
      const c = r.conversations || {};
      const tr = document.createElement("tr");
      if (r.self) tr.className = "self";
      cell(tr, r.instance);
      cell(tr, fmtAge(now - num(r.started_at)));
      cell(tr, `${num(r.heartbeat_age).toFixed(1)} s ago`);
      for (const key of ["active", "queued", "answered", "failed", "taken_over"]) cell(tr, fmtInt(c[key]));
      body.appendChild(tr);
    }
    const t = (dep.totals && dep.totals.conversations) || {};
    if (replicas.length > 1) {
      const tr = document.createElement("tr");
      cell(tr, `all ${replicas.length}`);
      cell(tr, "");
      cell(tr, "");
      for (const key of ["active", "queued", "answered", "failed", "taken_over"]) cell(tr, fmtInt(t[key]));
      body.appendChild(tr);
    }
    $("replicas-hint").textContent = replicas.length === 1
      ? "one live process on this store"
      : `${replicas.length} live processes share this store; the cards above are this replica's`;
    probe.replicas = replicas.length;
  }

  async function pollDeployment(headers) {
    if (deploymentPolls++ % 2) return; // every other poll: each replica publishes once a second
    try {
      const res = await fetch("/stats/deployment", { headers, cache: "no-store", signal: AbortSignal.timeout(FETCH_TIMEOUT_MS) });
      if (res.ok) renderReplicas(await res.json());
    } catch (err) {
      /* the replica list is extra: the main poll reports connection trouble */
    }
  }

  function setStatus(kind, text) {
    $("status").className = `status ${kind}`;
    $("status-text").textContent = text;
  }

  // ---- polling -----------------------------------------------------------------------
  let waitingForToken = false;

  async function poll() {
    const headers = { Accept: "application/json" };
    const token = getToken();
    if (token) headers.Authorization = `Bearer ${token}`;
    try {
      const res = await fetch("/stats", { headers, cache: "no-store", signal: AbortSignal.timeout(FETCH_TIMEOUT_MS) });
      if (res.status === 401) {
        setStatus("stale", token ? "token refused: use the Token button" : "token needed: use the Token button");
        askToken();
        return;
      }
      if (!res.ok) throw new Error(`HTTP ${res.status}`);
      const stats = await res.json();
      record(stats);
      paint(stats);
      pollDeployment(headers);
      probe.polls += 1;
      probe.lastStats = stats;
      setStatus("live", `live · ${new Date().toLocaleTimeString()}`);
    } catch (err) {
      probe.errors += 1;
      probe.lastError = String(err && err.message ? err.message : err);
      setStatus("stale", `no answer from the server (${probe.lastError})`);
    }
    schedule();
  }

  function schedule() {
    if (!waitingForToken) setTimeout(poll, POLL_MS);
  }

  function openTokenDialog() {
    const dialog = $("token-dialog");
    $("token-input").value = getToken();
    dialog.returnValue = ""; // Esc keeps the last value otherwise
    if (!dialog.open) dialog.showModal();
  }

  /** Polling stops until a token is saved (cancelling leaves the Token button to do it). */
  function askToken() {
    waitingForToken = true;
    openTokenDialog();
  }

  $("token-dialog").addEventListener("close", () => {
    if ($("token-dialog").returnValue !== "save") return;
    setToken($("token-input").value.trim());
    if (waitingForToken) {
      waitingForToken = false;
      setStatus("", "connecting…");
      poll();
    }
  });
  $("token-button").addEventListener("click", openTokenDialog);
  window.addEventListener("resize", () => { if (probe.lastStats) paint(probe.lastStats); });

  poll();
})();

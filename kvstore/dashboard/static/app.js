// kvstore dashboard: plain JavaScript, no build step, no external resources.
//
// Endpoints used (all served by this node):
//   GET  /dashboard/api/cluster      members with each member's Status (polled)
//   GET  /version
//   GET  /kv/<prefix>?prefix&limit=  key listing (paged with ?continue=)
//   PUT  /kv/<key>                   create (If-None-Match: *) and edit (If-Match: "<mod_revision>")
//   DELETE /kv/<key>                 delete (If-Match: "<mod_revision>")
//   GET  /watch/<prefix>             Server-Sent Events, read with fetch() so that
//                                    the Authorization header can be sent
//                                    (EventSource cannot send headers)
//   POST /v3/auth/authenticate       {"name", "password"} -> {"token"}
// With a token, every request carries "Authorization: <token>", the header
// etcd's JSON gateway reads the token from.
"use strict";

(function () {
  const MEMBERS_INTERVAL_MS = 3000;
  const PAGE_SIZE = 100;
  const MAX_EVENTS = 500;
  const RECONNECT_MS = 2000;

  const $ = (sel) => document.querySelector(sel);

  const state = {
    token: sessionStorage.getItem("kvstore.token") || "",
    user: sessionStorage.getItem("kvstore.user") || "",
    memberTimer: null,
    browsePrefix: "",
    continueToken: null,
    loadedKeys: 0,
    watch: null,
    loginDismissed: false,  // the user closed the sign-in form: background requests do not reopen it
  };

  // ------------------------------------------------------------ helpers
  function el(tag, attrs, ...children) {
    const e = document.createElement(tag);
    if (attrs) {
      for (const [k, v] of Object.entries(attrs)) {
        if (v === undefined || v === null || v === false) continue;
        if (k === "class") e.className = v;
        else if (k === "text") e.textContent = v;
        else if (k.startsWith("on")) e.addEventListener(k.slice(2), v);
        else if (k === "dataset") Object.assign(e.dataset, v);
        else e.setAttribute(k, v === true ? "" : v);
      }
    }
    for (const c of children) {
      if (c === null || c === undefined || c === false) continue;
      e.append(c instanceof Node ? c : document.createTextNode(String(c)));
    }
    return e;
  }

  function formatBytes(n) {
    if (n === null || n === undefined) return "–";
    const units = ["B", "KiB", "MiB", "GiB", "TiB"];
    let i = 0;
    let v = Number(n);
    while (v >= 1024 && i < units.length - 1) { v /= 1024; i++; }
    return (i === 0 ? String(v) : v.toFixed(v < 10 ? 1 : 0)) + " " + units[i];
  }

  function clock(d) {
    return (d || new Date()).toLocaleTimeString([], { hour12: false });
  }

  function b64ToBytes(s) {
    const bin = atob(s);
    const out = new Uint8Array(bin.length);
    for (let i = 0; i < bin.length; i++) out[i] = bin.charCodeAt(i);
    return out;
  }

  // The URL path of a key (or prefix): every byte that needs it percent-encoded.
  function keyPath(kv) {
    if (typeof kv === "string") return encodeURIComponent(kv);
    if (kv.key !== undefined) return encodeURIComponent(kv.key);
    return Array.from(b64ToBytes(kv.key_base64), (b) => "%" + b.toString(16).padStart(2, "0")).join("");
  }

  function keyLabel(kv) {
    return kv.key !== undefined ? kv.key : "base64:" + kv.key_base64;
  }

  let shownRevision = 0;
  function seenRevision(rev) {
    const n = Number(rev);
    if (n > shownRevision) {
      shownRevision = n;
      $("#fact-revision").textContent = String(n);
    }
  }

  function toast(msg, bad) {
    const t = el("div", { class: "toast" + (bad ? " bad" : ""), role: "status", text: msg });
    $("#toasts").append(t);
    setTimeout(() => t.remove(), bad ? 6000 : 3000);
  }

  function banner(msg) {
    const b = $("#banner");
    b.textContent = msg || "";
    b.hidden = !msg;
  }

  // ---------------------------------------------------------------- API
  class ApiError extends Error {
    constructor(status, message, body) {
      super(message);
      this.status = status;
      this.body = body;
    }
  }

  // An answer that means "sign in (as someone allowed)": 401/403, or etcd's
  // messages for a request without a (valid) token, whatever status carries them.
  function isAuthError(status, message) {
    if (status === 401 || status === 403) return true;
    return /user name is empty|invalid auth token|auth token is expired|permission denied/i.test(message || "");
  }

  function authHeaders(extra) {
    const h = Object.assign({}, extra || {});
    if (state.token) h["Authorization"] = state.token;
    return h;
  }

  async function api(method, path, opts) {
    opts = opts || {};
    let resp;
    try {
      resp = await fetch(path, {
        method,
        headers: authHeaders(opts.headers),
        body: opts.body,
        cache: "no-store",
        signal: opts.signal,
      });
    } catch (e) {
      if (e.name === "AbortError") throw e;
      throw new ApiError(0, "cannot reach the server (" + e.message + ")");
    }
    const ctype = resp.headers.get("Content-Type") || "";
    let body = null;
    if (ctype.includes("json")) {
      body = await resp.json().catch(() => null);
    } else if (!resp.ok) {
      body = { error: (await resp.text().catch(() => "")).trim() };
    }
    if (!resp.ok) {
      const message = (body && (body.error || body.message)) || resp.statusText || "HTTP " + resp.status;
      const err = new ApiError(resp.status, message, body);
      if (isAuthError(resp.status, message)) needLogin(message, resp.status, opts.background);
      throw err;
    }
    return { body, resp };
  }

  // ---------------------------------------------------------------- auth
  function showAuth() {
    $("#auth-user").hidden = !state.token;
    $("#auth-user").textContent = state.token ? "Signed in as " + (state.user || "?") : "";
    $("#logout").hidden = !state.token;
    $("#login-open").hidden = !!state.token;
  }

  function setToken(token, user) {
    state.token = token || "";
    state.user = token ? user || "" : "";
    if (token) {
      sessionStorage.setItem("kvstore.token", state.token);
      sessionStorage.setItem("kvstore.user", state.user);
    } else {
      sessionStorage.removeItem("kvstore.token");
      sessionStorage.removeItem("kvstore.user");
    }
    showAuth();
  }

  function needLogin(message, status, background) {
    if (status === 401 && state.token) setToken("");  // expired or unknown token
    const d = $("#login-dialog");
    if (d.open || (background && state.loginDismissed)) return;
    const reason = state.token
      ? "Signed in as " + state.user + ", but: " + message + ". Sign in as a user with access."
      : "The server asks for authentication (" + message + ").";
    openLogin(reason);
  }

  function openLogin(reason) {
    const d = $("#login-dialog");
    $("#login-reason").textContent = reason || "Sign in with an etcd user and password.";
    $("#login-error").textContent = "";
    $("#login-password").value = "";
    if (!d.open) d.showModal();
    $("#login-name").focus();
  }

  async function login(ev) {
    ev.preventDefault();
    const name = $("#login-name").value.trim();
    const password = $("#login-password").value;
    $("#login-submit").disabled = true;
    $("#login-error").textContent = "";
    try {
      const r = await fetch("/v3/auth/authenticate", {
        method: "POST",
        headers: { "Content-Type": "application/json" },
        body: JSON.stringify({ name, password }),
        cache: "no-store",
      });
      const body = await r.json().catch(() => null);
      if (!r.ok || !body || !body.token) {
        throw new Error((body && (body.error || body.message)) || "HTTP " + r.status);
      }
      setToken(body.token, name);
      state.loginDismissed = false;
      $("#login-dialog").close();
      toast("Signed in as " + name);
      refreshAll();
    } catch (e) {
      $("#login-error").textContent = e.message;
    } finally {
      $("#login-submit").disabled = false;
    }
  }

  function logout() {
    setToken("");
    toast("Signed out");
    refreshAll();
  }

  // ------------------------------------------------------------- members
  function healthOf(m, leader) {
    if (!m.status) return { cls: "bad", text: "unreachable", title: m.error || "" };
    if (m.alarms.length || m.status.errors.length) {
      return { cls: "bad", text: "alarm", title: (m.alarms.length ? m.alarms : m.status.errors).join(", ") };
    }
    if (!m.status.leader) return { cls: "warn", text: "no leader", title: "this member knows no leader" };
    if (leader && m.status.leader !== leader) {
      return { cls: "warn", text: "healthy", title: "follows another leader: " + m.status.leader };
    }
    return { cls: "ok", text: "healthy", title: "" };
  }

  function memberRow(m, data) {
    const st = m.status;
    const isLeader = data.leader !== null && m.id === data.leader;
    const health = healthOf(m, data.leader);
    const role = isLeader
      ? el("span", { class: "badge leader", title: "Raft leader" }, "★ Leader")
      : el("span", { class: "badge" }, m.is_learner ? "Learner" : "Follower");
    const alarms = m.alarms.length
      ? el("span", null, ...m.alarms.map((a) => el("span", { class: "badge bad" }, a)))
      : el("span", { class: "muted" }, "none");
    const num = (v) => el("td", { class: "num" }, st ? String(v) : "–");
    const tr = el("tr", {
      class: (isLeader ? "leader" : "") + (st ? "" : " down"),
      dataset: { memberId: m.id, leader: isLeader ? "true" : "false", health: health.text },
    },
      el("td", null,
        el("span", { class: "member-name" }, m.name || "(unstarted)"),
        m.id === data.member_id ? el("span", { class: "badge self-tag", title: "the member serving this page" }, "this node") : null),
      el("td", { class: "role" }, role),
      el("td", { class: "health" }, el("span", { class: "badge " + health.cls, title: health.title || m.error || "" }, health.text)),
      num(st && st.raft_term),
      num(st && st.raft_index),
      num(st && st.raft_applied_index),
      el("td", { class: "num", title: st ? "in use: " + formatBytes(st.db_size_in_use) : "" }, st ? formatBytes(st.db_size) : "–"),
      el("td", { class: "alarms" }, alarms),
      el("td", { class: "opt mono" }, m.id),
      el("td", { class: "opt urls" }, m.client_urls.join(", ") || "–"),
    );
    if (!st && m.error) tr.title = m.error;
    return tr;
  }

  async function refreshMembers() {
    clearTimeout(state.memberTimer);
    try {
      const { body } = await api("GET", "/dashboard/api/cluster", { background: true });
      const tbody = $("#members tbody");
      const members = body.members.slice().sort((a, b) => (a.name || "~").localeCompare(b.name || "~") || a.id.localeCompare(b.id));
      tbody.replaceChildren(...members.map((m) => memberRow(m, body)));
      $("#fact-cluster").textContent = body.cluster_id;
      const self = body.members.find((m) => m.id === body.member_id);
      $("#fact-member").textContent = self ? self.name + " (" + body.member_id + ")" : body.member_id;
      seenRevision(body.revision);
      $("#members-updated").textContent = "updated " + clock();
      const problems = [];
      if (!body.leader) problems.push("The cluster has no leader: writes and linearizable reads will fail until one is elected.");
      const alarms = new Set(body.members.flatMap((m) => m.alarms));
      if (alarms.size) problems.push("Alarm raised: " + Array.from(alarms).join(", ") + ".");
      banner(problems.join(" "));
    } catch (e) {
      if (e.name !== "AbortError") {
        $("#members-updated").textContent = "update failed " + clock() + ": " + e.message;
      }
    } finally {
      state.memberTimer = setTimeout(tick, MEMBERS_INTERVAL_MS);
    }
  }

  function tick() {
    if (document.hidden) {
      state.memberTimer = setTimeout(tick, MEMBERS_INTERVAL_MS);
      return;
    }
    refreshMembers();
  }

  async function loadVersion() {
    try {
      const { body } = await api("GET", "/version", { background: true });
      $("#fact-version").textContent = "kvstore " + body.kvstore + " · etcd API " + body.etcdserver;
    } catch (e) { /* shown elsewhere */ }
  }

  // ---------------------------------------------------------------- keys
  function valueCell(kv) {
    if (kv.value_base64 !== undefined) {
      const n = b64ToBytes(kv.value_base64).length;
      return el("td", { class: "value", title: "not UTF-8; base64: " + kv.value_base64 },
        el("span", { class: "v binary" }, "binary, " + n + " bytes"));
    }
    if (kv.value === "") return el("td", { class: "value" }, el("span", { class: "v empty-value" }, "empty"));
    const shown = kv.value.length > 300 ? kv.value.slice(0, 300) + "…" : kv.value;
    return el("td", { class: "value", title: kv.value.length > 2000 ? kv.value.slice(0, 2000) + "…" : kv.value },
      el("span", { class: "v" }, shown));
  }

  function keyRow(kv) {
    const label = keyLabel(kv);
    const tr = el("tr", { dataset: { key: label, modRevision: String(kv.mod_revision) } },
      el("td", { class: "key" }, label,
        kv.lease && kv.lease !== "0"
          ? el("span", { class: "badge", title: "attached to lease " + BigInt(kv.lease).toString(16) + " (hex)" }, "lease")
          : null),
      valueCell(kv),
      el("td", { class: "num" }, String(kv.create_revision)),
      el("td", { class: "num" }, String(kv.mod_revision)),
      el("td", { class: "num" }, String(kv.version)),
      el("td", { class: "actions" },
        el("button", { type: "button", class: "small edit", onclick: () => openEdit(kv) }, "Edit"),
        el("button", { type: "button", class: "small danger delete", onclick: (ev) => deleteKey(kv, ev.currentTarget) }, "Delete")),
    );
    return tr;
  }

  async function listKeys(opts) {
    opts = opts || {};
    const more = !!opts.more;
    const limit = opts.limit || PAGE_SIZE;
    let url = "/kv/" + keyPath(state.browsePrefix) + "?prefix&limit=" + limit;
    if (more && state.continueToken) url += "&continue=" + encodeURIComponent(state.continueToken);
    $("#browse-go").disabled = true;
    try {
      const { body } = await api("GET", url);
      const tbody = $("#keys tbody");
      const rows = body.kvs.map(keyRow);
      if (more) tbody.append(...rows);
      else tbody.replaceChildren(...rows);
      state.loadedKeys = (more ? state.loadedKeys : 0) + body.kvs.length;
      state.continueToken = body.more ? body.continue : null;
      $("#keys-more").hidden = !body.more;
      if (!tbody.children.length) {
        tbody.append(el("tr", { class: "placeholder" }, el("td", { colspan: "6" },
          state.browsePrefix ? "No keys under “" + state.browsePrefix + "”." : "The store is empty.")));
      }
      seenRevision(body.revision);
      const where = state.browsePrefix ? "under “" + state.browsePrefix + "”" : "in the store";
      const total = state.loadedKeys + (body.more ? body.count - body.kvs.length : 0);
      $("#keys-summary").textContent = total + " key" + (total === 1 ? "" : "s") + " " + where +
        (body.more ? " (showing " + state.loadedKeys + ")" : "") + " · read at revision " + body.revision;
      if (opts.flash) {
        for (const tr of tbody.querySelectorAll("tr")) {
          if (tr.dataset.key === opts.flash) tr.classList.add("flash");
        }
      }
    } catch (e) {
      if (e.name === "AbortError") return;
      $("#keys-summary").textContent = "Listing failed: " + e.message;
      if (!more) {
        $("#keys tbody").replaceChildren(el("tr", { class: "placeholder" }, el("td", { colspan: "6" }, e.message)));
        $("#keys-more").hidden = true;
      }
    } finally {
      $("#browse-go").disabled = false;
    }
  }

  function reloadKeys(flash) {
    return listKeys({ limit: Math.max(PAGE_SIZE, state.loadedKeys + 1), flash });
  }

  function browse(ev) {
    if (ev) ev.preventDefault();
    state.browsePrefix = $("#browse-prefix").value;
    state.continueToken = null;
    saveLocation();
    listKeys();
  }

  // --------------------------------------------------------- edit / create
  let editing = null;  // the kv being edited, or null when creating

  function openEdit(kv) {
    editing = kv;
    $("#edit-title").textContent = "Edit key";
    $("#edit-key").value = keyLabel(kv);
    $("#edit-key").readOnly = true;
    $("#edit-value").value = kv.value !== undefined ? kv.value : "";
    $("#edit-ttl-row").hidden = true;
    $("#edit-note").textContent = "Saved only if the key is still at revision " + kv.mod_revision +
      (kv.value_base64 !== undefined ? " (the current value is binary; saving replaces it with this text)." : ".");
    $("#edit-error").textContent = "";
    $("#edit-dialog").showModal();
    $("#edit-value").focus();
  }

  function openCreate() {
    editing = null;
    $("#edit-title").textContent = "New key";
    $("#edit-key").value = state.browsePrefix;
    $("#edit-key").readOnly = false;
    $("#edit-value").value = "";
    $("#edit-ttl").value = "";
    $("#edit-ttl-row").hidden = false;
    $("#edit-note").textContent = "Created only if the key does not exist yet.";
    $("#edit-error").textContent = "";
    $("#edit-dialog").showModal();
    $("#edit-key").focus();
  }

  async function saveEdit(ev) {
    ev.preventDefault();
    const value = $("#edit-value").value;
    let path, headers;
    let label;
    if (editing) {
      label = keyLabel(editing);
      path = "/kv/" + keyPath(editing);
      headers = { "If-Match": '"' + editing.mod_revision + '"' };
    } else {
      label = $("#edit-key").value;
      if (!label) { $("#edit-error").textContent = "A key is required."; return; }
      path = "/kv/" + keyPath(label);
      headers = { "If-None-Match": "*" };
      const ttl = $("#edit-ttl").value.trim();
      if (ttl) path += "?ttl=" + encodeURIComponent(ttl);
    }
    headers["Content-Type"] = "application/octet-stream";
    $("#edit-save").disabled = true;
    $("#edit-error").textContent = "";
    try {
      const { body } = await api("PUT", path, { body: value, headers });
      $("#edit-dialog").close();
      toast((editing ? "Saved " : "Created ") + label + " at revision " + body.revision);
      reloadKeys(label);
    } catch (e) {
      if (e.status === 412) {
        $("#edit-error").textContent = editing
          ? "The key changed since it was listed (now at revision " + ((e.body && e.body.mod_revision) || "?") +
            ", or deleted). Close, and edit the reloaded value."
          : "The key already exists.";
        if (editing) reloadKeys();
      } else if (isAuthError(e.status, e.message)) {
        $("#edit-error").textContent = "Not allowed (" + e.message + "): sign in, then save again.";
      } else {
        $("#edit-error").textContent = e.message;
      }
    } finally {
      $("#edit-save").disabled = false;
    }
  }

  // A delete asks once more on the button itself.
  async function deleteKey(kv, button) {
    if (!button.classList.contains("confirm")) {
      button.classList.add("confirm");
      button.textContent = "Confirm delete";
      setTimeout(() => {
        if (button.isConnected && button.classList.contains("confirm")) {
          button.classList.remove("confirm");
          button.textContent = "Delete";
        }
      }, 5000);
      return;
    }
    button.disabled = true;
    const label = keyLabel(kv);
    try {
      const { body } = await api("DELETE", "/kv/" + keyPath(kv), { headers: { "If-Match": '"' + kv.mod_revision + '"' } });
      toast("Deleted " + label + " at revision " + body.revision);
      reloadKeys();
    } catch (e) {
      if (e.status === 404) {
        toast(label + " was already deleted");
        reloadKeys();
      } else if (e.status === 412) {
        toast(label + " changed since it was listed: not deleted; reloaded", true);
        reloadKeys(label);
      } else {
        toast("Delete failed: " + e.message, true);
        button.disabled = false;
      }
    }
  }

  // --------------------------------------------------------- live changes
  // A Server-Sent Events reader over fetch(): resumes after the last
  // revision seen (Last-Event-ID) when the connection drops.
  class LiveWatch {
    constructor(prefix) {
      this.prefix = prefix;
      this.abort = new AbortController();
      this.lastId = null;
      this.stopped = false;
    }

    stop() {
      this.stopped = true;
      this.abort.abort();
    }

    async run() {
      while (!this.stopped) {
        let failure = null;
        try {
          await this.connect();
          failure = "the stream ended";
        } catch (e) {
          if (this.stopped || e.name === "AbortError") return;
          failure = e.message;
          if (e.fatal) { liveState("error", failure); return; }
        }
        if (this.stopped) return;
        liveState("retry", "reconnecting: " + failure);
        await new Promise((r) => setTimeout(r, RECONNECT_MS));
      }
    }

    async connect() {
      const headers = authHeaders({ Accept: "text/event-stream" });
      if (this.lastId !== null) headers["Last-Event-ID"] = this.lastId;
      const resp = await fetch("/watch/" + keyPath(this.prefix), {
        headers, cache: "no-store", signal: this.abort.signal,
      });
      if (!resp.ok) {
        const body = await resp.json().catch(() => null);
        const message = (body && body.error) || "HTTP " + resp.status;
        const err = new Error(message);
        if (isAuthError(resp.status, message)) { needLogin(message, resp.status, true); err.fatal = true; }
        if (resp.status === 400) err.fatal = true;
        throw err;
      }
      liveState("live", this.lastId !== null ? "resumed after revision " + this.lastId : "");
      const reader = resp.body.pipeThrough(new TextDecoderStream()).getReader();
      let buf = "";
      for (;;) {
        const { value, done } = await reader.read();
        if (done) return;
        buf += value.replace(/\r\n?/g, "\n");
        let i;
        while ((i = buf.indexOf("\n\n")) >= 0) {
          const block = buf.slice(0, i);
          buf = buf.slice(i + 2);
          this.message(block);
        }
      }
    }

    message(block) {
      let event = "message";
      let id = null;
      const data = [];
      for (const line of block.split("\n")) {
        if (!line || line.startsWith(":")) continue;
        const c = line.indexOf(":");
        const field = c < 0 ? line : line.slice(0, c);
        let v = c < 0 ? "" : line.slice(c + 1);
        if (v.startsWith(" ")) v = v.slice(1);
        if (field === "event") event = v;
        else if (field === "id") id = v;
        else if (field === "data") data.push(v);
      }
      if (!data.length) return;
      let msg;
      try { msg = JSON.parse(data.join("\n")); } catch (e) { return; }
      if (event === "error") {
        if (msg.code === 410) {
          // The revision to resume from was compacted: start again from now.
          addNote("Missed changes: history before revision " + msg.compact_revision + " was compacted. Watching from now.");
          this.lastId = null;
        } else {
          addNote("Watch ended: " + msg.error);
        }
        return;
      }
      if (id !== null) this.lastId = id;
      addEvents(msg);
    }
  }

  function liveState(kind, detail) {
    const p = $("#live-state");
    p.className = "pill " + kind;
    p.textContent = { live: "live", connecting: "connecting", retry: "reconnecting", error: "stopped", stopped: "stopped" }[kind] || kind;
    p.title = detail || "";
    if (kind === "error" && detail) addNote(detail);
  }

  function trimEvents() {
    const list = $("#live");
    while (list.children.length > MAX_EVENTS) list.lastElementChild.remove();
    $("#live-empty").hidden = list.children.length > 0;
  }

  function addNote(text) {
    $("#live").prepend(el("li", { class: "note" }, clock() + " · " + text));
    trimEvents();
  }

  function addEvents(msg) {
    const list = $("#live");
    const now = clock();
    seenRevision(msg.revision);
    // Events of one revision in their order, newest revision on top.
    const items = msg.events.map((ev) => {
      const label = keyLabel(ev);
      let val = null;
      if (ev.type === "PUT") {
        val = ev.value !== undefined ? ev.value : "binary (" + b64ToBytes(ev.value_base64).length + " bytes)";
      }
      return el("li", { class: "new", dataset: { key: label, type: ev.type, revision: String(msg.revision) } },
        el("span", { class: "time" }, now),
        el("span", { class: "rev", title: "revision" }, "#" + msg.revision),
        el("span", { class: "type " + ev.type }, ev.type),
        el("span", { class: "key" }, label),
        val !== null ? el("span", { class: "val", title: val.length > 2000 ? val.slice(0, 2000) + "…" : val },
          val === "" ? "(empty)" : val.slice(0, 300)) : null,
      );
    });
    list.prepend(...items);
    trimEvents();
  }

  function startWatch(prefix) {
    stopWatch();
    state.watch = new LiveWatch(prefix);
    $("#watch-toggle").textContent = "Stop";
    $("#watch-prefix").value = prefix;
    $("#live-summary").textContent = "Changes " + (prefix ? "under “" + prefix + "”" : "to every key") + ", newest first.";
    if ($("#live").children.length) addNote("Watching " + (prefix ? "“" + prefix + "”" : "every key") + " from now.");
    liveState("connecting");
    state.watch.run();
  }

  function stopWatch() {
    if (state.watch) state.watch.stop();
    state.watch = null;
    $("#watch-toggle").textContent = "Watch";
    liveState("stopped");
  }

  function toggleWatch(ev) {
    ev.preventDefault();
    const prefix = $("#watch-prefix").value;
    if (state.watch && state.watch.prefix === prefix) stopWatch();
    else startWatch(prefix);
    saveLocation();
  }

  // --------------------------------------------------------------- setup
  function saveLocation() {
    const q = new URLSearchParams();
    if (state.browsePrefix) q.set("prefix", state.browsePrefix);
    if (state.watch) q.set("watch", state.watch.prefix);
    else q.set("watch", "off");
    if (q.get("watch") === "") q.delete("watch");
    const s = q.toString();
    history.replaceState(null, "", s ? "?" + s : location.pathname);
  }

  function refreshAll() {
    refreshMembers();
    listKeys();
    if (state.watch) startWatch(state.watch.prefix);
  }

  function init() {
    const q = new URLSearchParams(location.search);
    state.browsePrefix = q.get("prefix") || "";
    $("#browse-prefix").value = state.browsePrefix;
    const watch = q.get("watch");

    $("#browse-form").addEventListener("submit", browse);
    $("#keys-more").addEventListener("click", () => listKeys({ more: true }));
    $("#new-key").addEventListener("click", openCreate);
    $("#edit-form").addEventListener("submit", saveEdit);
    $("#edit-cancel").addEventListener("click", () => $("#edit-dialog").close());
    $("#members-refresh").addEventListener("click", refreshMembers);
    $("#watch-form").addEventListener("submit", toggleWatch);
    $("#live-clear").addEventListener("click", () => { $("#live").replaceChildren(); trimEvents(); });
    $("#login-open").addEventListener("click", () => openLogin());
    $("#login-form").addEventListener("submit", login);
    $("#login-cancel").addEventListener("click", () => { state.loginDismissed = true; $("#login-dialog").close(); });
    $("#login-dialog").addEventListener("cancel", () => { state.loginDismissed = true; });  // Escape
    $("#watch-prefix").addEventListener("input", () => {
      const same = state.watch && state.watch.prefix === $("#watch-prefix").value;
      $("#watch-toggle").textContent = same ? "Stop" : "Watch";
    });
    $("#logout").addEventListener("click", logout);
    document.addEventListener("visibilitychange", () => { if (!document.hidden) refreshMembers(); });

    showAuth();
    loadVersion();
    refreshMembers();
    listKeys();
    if (watch !== "off") startWatch(watch || "");
    else stopWatch();
  }

  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", init);
  else init();
})();

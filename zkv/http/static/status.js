/*
 * The zkv status page: polls GET /api/status every second and renders the shards and
 * nodes (a node that is not alive is marked DOWN in red; one that `zkv up` gave up
 * restarting, state "failed", is marked FAILED in red with its last error line; each node's
 * disk, its free bytes and storage state, amber when "low", red when "full" or "error" with
 * the error's text; each node's memory, its used bytes of its memory.max_bytes, its
 * memory.policy and its evictions, amber at 90% of the limit, red at 100%), the cluster's
 * operations per second (from the nodes' request counters between polls), each shard's
 * slots (how many, their ranges), the slot map version, and while slots move between shards
 * (status.reshard) a "Moving slots" panel: a progress bar, keys copied, the move in
 * progress, the longest final-switch hold, the requests held, and why it stopped in red; and
 * a form that gets, puts and deletes a key through the gateway's REST routes. Plain
 * JavaScript, no library.
 *
 * A gateway with bearer tokens (http.tokens) answers 401 without one: the page then asks
 * for a token, keeps it in sessionStorage only (this tab, until it is closed or "Forget
 * token" is pressed; never localStorage, never the URL) and sends it as the Authorization
 * header of every request. 401 and 403 answers are shown as such.
 */
"use strict";

(function () {
  const POLL_MS = 1000;          // time between two polls (after the previous one ended)
  const FETCH_TIMEOUT_MS = 4000; // a poll or form request is abandoned after this long
  const RATE_WINDOW_MS = 5000;   // operations per second are averaged over this window
  const TOKEN_KEY = "zkv.token"; // the bearer token's name in sessionStorage

  const $ = (id) => document.getElementById(id);
  const nodeRows = new Map();    // node name -> <tr>
  const shardRows = new Map();   // shard name -> <tr>
  const lastRequests = new Map(); // node name -> its last `requests` counter
  let totalOps = 0;              // operations counted since the page loaded
  const samples = [];            // [time ms, totalOps], oldest first
  let token = loadToken();       // the bearer token ("" for none)
  let waitingForToken = false;   // polling paused until a token is entered

  // ------------------------------------------------------------------------ the token

  /** The token of this tab's session, if one was entered (sessionStorage may be off). */
  function loadToken() {
    try { return sessionStorage.getItem(TOKEN_KEY) || ""; } catch (e) { return ""; }
  }

  /** Use `value` as the token from now on ("" forgets it); kept for this tab's session only. */
  function setToken(value) {
    token = value;
    try {
      if (value) sessionStorage.setItem(TOKEN_KEY, value);
      else sessionStorage.removeItem(TOKEN_KEY);
    } catch (e) { /* kept in memory only */ }
    $("token-forget").hidden = !value;
  }

  /** Show the token prompt with `message`; the field gets the focus when it appears. */
  function askForToken(message) {
    $("auth-message").textContent = message;
    const box = $("auth");
    if (box.hidden) {
      box.hidden = false;
      $("token").focus();
    }
  }

  /** The prompt's message for a 401 answer, given whether a token was sent. */
  function unauthorizedText(reply) {
    const why = reply.body && reply.body.error ? reply.body.error.message : "HTTP 401";
    return token
      ? "The gateway refused the token (401): " + why + " Enter another one."
      : "This gateway asks for a bearer token (401): enter yours to see the cluster.";
  }

  /** Text for a value the broker may not know yet (null). */
  function show(value) {
    if (value === null || value === undefined || value === "") return "\u2013";
    if (typeof value === "boolean") return value ? "yes" : "no";
    if (typeof value === "number") return value.toLocaleString("en-US");
    return String(value);
  }

  /** A byte count for people, in decimal units ("12.3 MB"); null if unknown (null, -1). */
  function bytes(count) {
    if (typeof count !== "number" || !(count >= 0)) return null;
    if (count < 1000) return Math.floor(count) + " B";
    let value = count / 1000;
    for (const unit of ["kB", "MB", "GB", "TB"]) {
      if (value < 999.95) return value.toFixed(1) + " " + unit;
      value /= 1000;
    }
    return value.toFixed(1) + " PB";
  }

  /** Whether a node counts as up: alive, and not given up on by `zkv up`. */
  function isUp(node) {
    return node.alive === true && node.state !== "failed";
  }

  /** Ranges shown in a Slots cell; more are summed up ("+3 more"), all are in the tooltip. */
  const RANGES_SHOWN = 3;

  /**
   * A Slots cell: "5,461 (0-5460)", the first ranges only when there are many
   * ("4,096 (0-127,256-383,512-639, +9 more)"), the full list as the cell's tooltip.
   */
  function setSlots(cell, count, ranges) {
    const runs = typeof ranges === "string" && ranges ? ranges.split(",") : [];
    let text = show(count);
    if (count && runs.length) {
      const more = runs.length - RANGES_SHOWN;
      text += " (" + runs.slice(0, RANGES_SHOWN).join(",") + (more > 0 ? ", +" + more + " more" : "") + ")";
    }
    if (cell.textContent !== text) cell.textContent = text;
    const title = count && runs.length ? "slots " + ranges : "";
    if (cell.title !== title) cell.title = title;
  }

  /** fetch() with a timeout; resolves to {status, body} where body is parsed JSON or text. */
  async function request(method, url, body) {
    const controller = new AbortController();
    const timer = setTimeout(() => controller.abort(), FETCH_TIMEOUT_MS);
    try {
      const init = { method, signal: controller.signal, cache: "no-store", headers: {} };
      if (token) init.headers["Authorization"] = "Bearer " + token;
      if (body !== undefined) {
        init.body = JSON.stringify(body);
        init.headers["Content-Type"] = "application/json";
      }
      const response = await fetch(url, init);
      const text = await response.text();
      let parsed = text;
      if ((response.headers.get("Content-Type") || "").startsWith("application/json")) {
        try { parsed = JSON.parse(text); } catch (e) { /* keep the text */ }
      }
      return { status: response.status, body: parsed };
    } catch (err) {
      const reason = err && err.name === "AbortError" ? "no answer in time" : String(err && err.message || err);
      throw new Error("the gateway cannot be reached: " + reason);
    } finally {
      clearTimeout(timer);
    }
  }

  /** The error message of a gateway answer ({"error": {"code", "message"}}), or its text. */
  function errorText(reply) {
    const error = reply.body && reply.body.error;
    if (error && error.code) return error.code + ": " + error.message;
    return "HTTP " + reply.status + (typeof reply.body === "string" && reply.body ? ": " + reply.body : "");
  }

  /** A <tr> with one cell per column; the first is a row header. Cells carry data-label for phones. */
  function makeRow(table, key, attribute) {
    const headers = Array.from(table.tHead.rows[0].cells, (th) => th.textContent);
    const tr = document.createElement("tr");
    tr.dataset[attribute] = key;
    headers.forEach((label, i) => {
      const cell = document.createElement(i === 0 ? "th" : "td");
      if (i === 0) cell.scope = "row";
      cell.dataset.label = label;
      tr.appendChild(cell);
    });
    table.tBodies[0].appendChild(tr);
    return tr;
  }

  /** Marks a cell that setCells leaves alone (its content is rendered elsewhere). */
  const CUSTOM = Object.freeze({});

  function setCells(tr, values) {
    values.forEach((value, i) => {
      if (value === CUSTOM) return;
      const text = show(value);
      if (tr.cells[i].textContent !== text) tr.cells[i].textContent = text;
    });
  }

  /** Keep exactly the rows of `keys` (in that order) in `table`. */
  function syncRows(table, rows, keys, attribute) {
    for (const [key, tr] of rows) {
      if (!keys.includes(key)) { tr.remove(); rows.delete(key); }
    }
    const body = table.tBodies[0];
    keys.forEach((key, i) => {
      let tr = rows.get(key);
      if (!tr) { tr = makeRow(table, key, attribute); rows.set(key, tr); }
      if (body.rows[i] !== tr) body.insertBefore(tr, body.rows[i] || null);
    });
  }

  /**
   * The State cell: the node's state, or for a failed node (given up on by `zkv up`)
   * "failed" and its last error line beneath. Text only (textContent), never markup.
   */
  function renderState(cell, node, failed) {
    const error = failed ? show(node.error === null || node.error === undefined ? "no error line recorded" : node.error) : "";
    const key = failed ? "failed\n" + error : show(node.state);
    if (cell.dataset.shown === key) return;
    cell.dataset.shown = key;
    if (!failed) { cell.textContent = key; return; }
    const box = document.createElement("span");
    box.className = "failed-state";
    const state = document.createElement("strong");
    state.textContent = "failed";
    const line = document.createElement("span");
    line.className = "error-line";
    line.textContent = error;
    box.append(state, line);
    cell.replaceChildren(box);
  }

  /** The CSS class of a storage state: "low" is a warning, "full" and "error" are bad. */
  function diskLevel(storage) {
    if (storage === "ok") return "disk-ok";
    if (storage === "low") return "disk-low";
    return storage ? "disk-bad" : "";
  }

  /**
   * The Disk cell: the storage state and the free bytes; a state other than "ok" in amber
   * ("low") or red ("full", "error"), with the node's last storage error beneath. Text only
   * (textContent), never markup.
   */
  function renderDisk(cell, node) {
    const storage = typeof node.storage === "string" && node.storage ? node.storage : null;
    const free = bytes(node.free_bytes);
    const error = storage && storage !== "ok" && node.storage_error ? String(node.storage_error) : "";
    const key = [storage, free, error].join("\n");
    if (cell.dataset.shown === key) return;
    cell.dataset.shown = key;
    const level = diskLevel(storage);
    cell.className = level;
    cell.title = error ? "storage " + storage + ": " + error : "";
    if (!storage && !free) { cell.textContent = show(null); return; }
    const box = document.createElement("span");
    box.className = "disk";
    const state = document.createElement(level === "disk-ok" ? "span" : "strong");
    state.className = "disk-state";
    state.textContent = show(storage);
    box.appendChild(state);
    if (free) {
      const space = document.createElement("span");
      space.className = "disk-free";
      space.textContent = free + " free";
      box.appendChild(space);
    }
    if (error) {
      const line = document.createElement("span");
      line.className = "error-line";
      line.textContent = error;
      box.appendChild(line);
    }
    cell.replaceChildren(box);
  }

  /** Memory use at or above this share of memory.max_bytes is shown in amber (100%: red). */
  const MEMORY_HIGH = 0.9;

  /** The CSS class of a node's memory use: "" with no limit (or unknown), else its level. */
  function memoryLevel(used, max) {
    if (typeof used !== "number" || typeof max !== "number" || !(max > 0)) return "";
    if (used >= max) return "memory-full";
    if (used >= MEMORY_HIGH * max) return "memory-high";
    return "memory-ok";
  }

  /**
   * The Memory cell: used bytes of memory.max_bytes ("1.2 MB / 3.0 MB", or "/ no limit"
   * for 0), and beneath in small text the policy and the keys evicted; amber at 90% of the
   * limit, red at 100%. The tooltip says it in full. Text only (textContent), never markup.
   */
  function renderMemory(cell, node) {
    const used = bytes(node.used_bytes);
    const max = typeof node.max_bytes === "number" && node.max_bytes > 0 ? bytes(node.max_bytes) : null;
    const limit = typeof node.max_bytes === "number" ? (max || "no limit") : null;
    const policy = typeof node.policy === "string" && node.policy ? node.policy : null;
    const evictions = typeof node.evictions === "number" ? node.evictions : null;
    const key = [node.used_bytes, node.max_bytes, policy, evictions, node.role].join("\n");
    if (cell.dataset.shown === key) return;
    cell.dataset.shown = key;
    const level = memoryLevel(node.used_bytes, node.max_bytes);
    cell.className = level;
    if (!used && !limit) { cell.textContent = show(null); cell.title = ""; return; }
    const box = document.createElement("span");
    box.className = "memory";
    const figures = document.createElement(level === "memory-high" || level === "memory-full" ? "strong" : "span");
    figures.className = "memory-used";
    figures.textContent = show(used) + " / " + show(limit);
    box.appendChild(figures);
    const details = [];
    if (policy) details.push(policy);
    if (evictions !== null) details.push(show(evictions) + " evicted");
    if (details.length) {
      const small = document.createElement("small");
      small.className = "memory-policy";
      small.textContent = details.join(" \u00b7 ");
      box.appendChild(small);
    }
    cell.replaceChildren(box);
    const share = level ? " (" + Math.floor((100 * node.used_bytes) / node.max_bytes) + "% of the limit)" : "";
    cell.title =
      "memory: " + show(used) + " used of " + (max ? max + share : "no limit") +
      "; memory.policy " + show(policy) +
      "; " + show(evictions) + " keys evicted since the node started" +
      (node.role === "replica" ? " (its primary's evictions it applied)" : "");
  }

  function renderNodes(nodes, shards) {
    const table = $("nodes");
    syncRows(table, nodeRows, nodes.map((n) => n.name), "node");
    for (const node of nodes) {
      const tr = nodeRows.get(node.name);
      const alive = node.alive === true;
      const failed = node.state === "failed";
      tr.dataset.alive = String(alive);
      tr.dataset.failed = String(failed);
      tr.classList.toggle("down", !alive || failed);
      tr.classList.toggle("failed", failed);
      tr.classList.toggle("primary", node.role === "primary");
      setCells(tr, [
        node.name, node.shard, node.role, failed ? "FAILED" : alive ? "up" : "DOWN", CUSTOM,
        node.epoch, node.seq, node.lag, node.in_sync, node.keys, CUSTOM, node.requests, node.errors,
        CUSTOM, CUSTOM,
      ]);
      renderState(tr.cells[4], node, failed);
      // a shard with no serving primary: the broker cannot say which node has its slots
      const unknown = !node.slots && shards[node.shard] && shards[node.shard].serving === false;
      setSlots(tr.cells[10], unknown ? null : node.slots, node.slot_ranges);
      renderDisk(tr.cells[13], node);
      renderMemory(tr.cells[14], node);
      const aliveCell = tr.cells[3];
      aliveCell.className = failed ? "badge failed" : alive ? "badge up" : "badge down";
      if (failed) {
        tr.title = "node " + node.name + " failed: zkv up gave up restarting it. Last error: " + show(node.error);
      } else {
        tr.title = alive ? "" : "node " + node.name + " is down (last seen " + show(node.last_seen_s) + " s ago)";
      }
      const inSync = tr.cells[8];
      inSync.classList.toggle("warn", node.role !== "primary" && node.in_sync === false);
    }
  }

  function renderShards(shards, nodes) {
    const names = Object.keys(shards).sort();
    syncRows($("shards"), shardRows, names, "shard");
    for (const name of names) {
      const shard = shards[name];
      const members = nodes.filter((n) => n.shard === name);
      const up = members.filter(isUp).length;
      const primary = members.find((n) => n.name === shard.primary);
      // the broker counts a shard's slots on its serving primary (the node table's Slots)
      const owner = members.find((n) => n.slots > 0);
      const slots = owner ? owner.slots : shard.serving === false ? null : 0;
      const tr = shardRows.get(name);
      setCells(tr, [
        name, shard.primary, shard.epoch, shard.serving, up + " / " + members.length,
        primary ? primary.keys : null, CUSTOM,
      ]);
      setSlots(tr.cells[6], slots, owner ? owner.slot_ranges : "");
      tr.classList.toggle("down", shard.serving === false || up === 0);
      tr.classList.toggle("degraded", shard.serving !== false && up > 0 && up < members.length);
    }
  }

  /** Cluster-wide operations per second: the nodes' request counters, over the last seconds. */
  function renderRate(nodes, now) {
    for (const node of nodes) {
      if (typeof node.requests !== "number") continue;
      const before = lastRequests.get(node.name);
      if (before !== undefined) {
        // a restarted node counts from 0 again: its new count is all new operations
        totalOps += node.requests >= before ? node.requests - before : node.requests;
      }
      lastRequests.set(node.name, node.requests);
    }
    samples.push([now, totalOps]);
    while (samples.length > 2 && now - samples[1][0] >= RATE_WINDOW_MS) samples.shift();
    const [t0, ops0] = samples[0];
    if (now > t0) {
      const rate = ((totalOps - ops0) * 1000) / (now - t0);
      $("ops").textContent = rate.toLocaleString("en-US", { maximumFractionDigits: rate < 10 ? 1 : 0 });
    }
  }

  /**
   * The "Moving slots" panel, shown while status.reshard is not null: a bar of the slots
   * moved of those to move, the keys copied, the moves left, the move in progress (its
   * slots, source -> target, phase), the longest final-switch hold and the requests held
   * now; a reshard that stopped on a failure is red, its reason as text.
   */
  function renderMoves(reshard) {
    const panel = $("moves");
    panel.hidden = !reshard;
    if (!reshard) return;
    const total = typeof reshard.slots_total === "number" ? reshard.slots_total : 0;
    const done = typeof reshard.slots_done === "number" ? reshard.slots_done : 0;
    const left = typeof reshard.moves_left === "number" ? reshard.moves_left : 0;
    const failed = reshard.failed ? String(reshard.failed) : "";
    const state = failed ? "stopped" : left === 0 ? "done" : "moving";
    panel.className = "moves moves-" + state;
    $("moves-state").textContent = state === "moving" ? "in progress" : state;
    const share = total > 0 ? Math.min(1, done / total) : state === "done" ? 1 : 0;
    const percent = Math.floor(100 * share);
    const bar = $("moves-bar");
    bar.setAttribute("aria-valuemax", String(total));
    bar.setAttribute("aria-valuenow", String(done));
    bar.setAttribute("aria-valuetext", show(done) + " of " + show(total) + " slots moved");
    $("moves-fill").style.width = (100 * share).toFixed(2) + "%";
    $("moves-progress").textContent = show(done) + " / " + show(total) + " slots moved (" + percent + "%)";
    $("moves-keys").textContent = show(reshard.keys_copied);
    $("moves-left").textContent = show(left);
    const move = reshard.current;
    const current = $("moves-current");
    if (move) {
      const attempts = typeof move.attempts === "number" ? move.attempts : 0;
      const parts = [
        ["move-slots", "slots " + show(move.slots)],
        ["move-route", show(move.from) + " \u2192 " + show(move.to)],
        ["move-phase", show(move.phase)],
      ];
      if (typeof move.keys === "number") parts.push(["move-keys", show(move.keys) + " keys"]);
      if (attempts > 0) parts.push(["move-attempt", "attempt " + (attempts + 1)]);
      const key = parts.map((p) => p[1]).join("\n");
      if (current.dataset.shown !== key) {
        current.dataset.shown = key;
        current.replaceChildren(...parts.map(([cls, text]) => {
          const span = document.createElement("span");
          span.className = cls;
          span.textContent = text;
          return span;
        }));
      }
    } else {
      current.dataset.shown = "";
      current.textContent = state === "moving" ? "between moves" : "\u2013";
    }
    const hold = reshard.longest_hold_ms;
    $("moves-hold").textContent = typeof hold === "number"
      ? hold.toLocaleString("en-US", { minimumFractionDigits: 1, maximumFractionDigits: 1 }) + " ms"
      : show(null);
    const held = $("moves-held");
    held.textContent = show(reshard.held);
    held.classList.toggle("warn", typeof reshard.held === "number" && reshard.held > 0);
    const why = $("moves-failed");
    why.hidden = !failed;
    if (why.textContent !== failed) why.textContent = failed;
  }

  function render(status, now) {
    const nodes = Array.isArray(status.nodes) ? status.nodes : [];
    const shards = status.shards || {};
    const broker = status.broker || {};
    if (status.cluster) $("cluster-name").textContent = status.cluster;
    renderShards(shards, nodes);
    renderNodes(nodes, shards);
    renderRate(nodes, now);
    const up = nodes.filter(isUp).length;
    $("nodes-up").textContent = up + " / " + nodes.length;
    $("nodes-up").parentElement.classList.toggle("bad", up < nodes.length);
    const keys = nodes.reduce((sum, n) => sum + (n.role === "primary" && isUp(n) && n.keys ? n.keys : 0), 0);
    $("keys-total").textContent = show(keys);
    $("failovers").textContent = show(broker.failovers);
    $("slot-map-version").textContent = show(status.slot_map_version);
    renderMoves(status.reshard || null);
  }

  function setConnection(state, text) {
    const el = $("connection");
    el.className = "connection " + state;
    el.textContent = text;
    document.body.classList.toggle("stale", state === "error");
  }

  async function poll() {
    try {
      const reply = await request("GET", "/api/status");
      if (reply.status === 401) {
        askForToken(unauthorizedText(reply));
        setConnection("error", "token needed");
        waitingForToken = true; // polled again once a token is entered
        return;
      }
      if (reply.status === 403) {
        throw new Error("this token may not read the status (403): " + errorText(reply));
      }
      if (reply.status !== 200) throw new Error(errorText(reply));
      render(reply.body, performance.now());
      setConnection("ok", "live");
      $("auth").hidden = true;
      $("updated").textContent = "updated " + new Date().toLocaleTimeString();
    } catch (err) {
      setConnection("error", "status unavailable: " + err.message);
    } finally {
      if (!waitingForToken) setTimeout(poll, POLL_MS);
    }
  }

  function useToken(value) {
    setToken(value);
    $("auth-message").textContent = "checking the token\u2026";
    if (waitingForToken) {
      waitingForToken = false;
      poll();
    }
  }

  // ------------------------------------------------------------------------ the key form

  function showResult(ok, title, detail) {
    const box = $("kv-result");
    box.className = "kv-result " + (ok ? "ok" : "error");
    box.replaceChildren();
    const strong = document.createElement("strong");
    strong.textContent = title;
    box.appendChild(strong);
    if (detail !== undefined) {
      const pre = document.createElement("pre");
      pre.id = "kv-output";
      pre.textContent = detail;
      box.appendChild(pre);
    }
  }

  /** The value field as JSON; text that is not JSON is a string. */
  function valueOf(text) {
    try { return JSON.parse(text); } catch (e) { return text; }
  }

  async function submit(action) {
    const key = $("kv-key").value;
    if (!key) { showResult(false, "InvalidRequest: enter a key"); $("kv-key").focus(); return; }
    const query = "?key=" + encodeURIComponent(key);
    try {
      let reply;
      if (action === "get") {
        reply = await request("GET", "/get" + query);
        if (reply.status === 200) {
          showResult(true, "value of " + JSON.stringify(key), JSON.stringify(reply.body.value, null, 2));
          return;
        }
      } else if (action === "put") {
        const body = { key, value: valueOf($("kv-value").value) };
        const ttl = $("kv-ttl").value.trim();
        if (ttl) body.ttl = Number(ttl);
        reply = await request("POST", "/api/kv", body);
      } else {
        reply = await request("DELETE", "/delete" + query);
      }
      if (reply.status < 300) {
        showResult(true, reply.body.message || "done");
      } else if (reply.status === 401) {
        askForToken(unauthorizedText(reply));
        showResult(false, "Unauthorized (401): enter a bearer token above. " + errorText(reply));
      } else if (reply.status === 403) {
        showResult(false, "Not allowed for this token (403): " + errorText(reply));
      } else {
        showResult(false, errorText(reply));
      }
    } catch (err) {
      showResult(false, err.message);
    }
  }

  // ------------------------------------------------------------------------ live tail

  const TAIL_MAX = 50;  // changes shown
  let tailCursor = "";  // the last event's id: a reconnect resumes after it

  /** Show one SSE event block (id:, event:, data: lines) at the top of the tail. */
  function tailEvent(block) {
    let id = "";
    let data = "";
    for (const line of block.split("\n")) {
      if (line.startsWith("id: ")) id = line.slice(4);
      else if (line.startsWith("data: ")) data += line.slice(6);
    }
    if (!data) return;
    if (id) tailCursor = id;
    const ev = JSON.parse(data);
    const key = typeof ev.key === "string" ? ev.key : JSON.stringify(ev.key);
    const li = document.createElement("li");
    li.className = "tail-" + ev.kind;
    li.textContent = new Date().toLocaleTimeString() + "  " + ev.kind + "  " +
      (ev.kind === "resync" ? ev.shard + ": " + ev.reason : (key || "(every key)") + "  [" + ev.shard + " #" + ev.seq + "]");
    const list = $("tail");
    list.prepend(li);
    while (list.children.length > TAIL_MAX) list.lastChild.remove();
  }

  /** Follow GET /api/watch (fetch, not EventSource: it sends the bearer token), forever. */
  async function tail() {
    for (;;) {
      try {
        const headers = {};
        if (token) headers["Authorization"] = "Bearer " + token;
        if (tailCursor) headers["Last-Event-ID"] = tailCursor;
        const response = await fetch("/api/watch?values=false", { headers, cache: "no-store" });
        if (!response.ok || !response.body) {
          $("tail-state").textContent = response.status === 401 ? "(needs a token)" : "(HTTP " + response.status + ")";
        } else {
          $("tail-state").textContent = "(live)";
          const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
          let buffer = "";
          for (;;) {
            const { value, done } = await reader.read();
            if (done) break;
            buffer += value;
            let end;
            while ((end = buffer.indexOf("\n\n")) >= 0) {
              tailEvent(buffer.slice(0, end));
              buffer = buffer.slice(end + 2);
            }
          }
        }
      } catch (err) {
        $("tail-state").textContent = "(reconnecting)";
      }
      await new Promise((resolve) => setTimeout(resolve, 2000));
    }
  }

  function start() {
    $("token-forget").hidden = !token;
    $("token-form").addEventListener("submit", (event) => {
      event.preventDefault();
      const value = $("token").value.trim();
      $("token").value = "";
      if (!value) { $("auth-message").textContent = "Enter a token."; $("token").focus(); return; }
      useToken(value);
    });
    $("token-forget").addEventListener("click", () => {
      setToken("");
      $("kv-result").replaceChildren();
      // the next poll answers 401 and shows the prompt
    });
    const form = $("kv-form");
    form.addEventListener("submit", (event) => {
      event.preventDefault();
      const action = (event.submitter && event.submitter.value) || "get";
      const buttons = form.querySelectorAll("button");
      buttons.forEach((b) => { b.disabled = true; });
      $("kv-result").setAttribute("aria-busy", "true");
      submit(action).finally(() => {
        buttons.forEach((b) => { b.disabled = false; });
        $("kv-result").removeAttribute("aria-busy");
      });
    });
    poll();
    tail();
  }

  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", start);
  else start();
})();

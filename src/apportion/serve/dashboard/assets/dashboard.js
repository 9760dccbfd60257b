// apportion dashboard: live updates over Server-Sent Events. Plain JavaScript, no build.
// Every name is written with textContent (never parsed as HTML); fragments come from the
// same server, already escaped.
(function () {
  "use strict";
  var body = document.body;
  var stream = body.getAttribute("data-stream");
  if (!stream) { return; }
  var fragment = body.getAttribute("data-fragment");
  var pageRequest = body.getAttribute("data-request");
  var requests = new Map();
  var pending = new Map();
  var live = document.getElementById("live");
  var announcer = document.getElementById("announcer");
  var heard = [];
  var cursor = body.getAttribute("data-cursor");  // the last event's (kept off the DOM)
  var KEEP_CLOSED_MS = 60000;

  function index() {
    document.querySelectorAll("tbody.request").forEach(function (tb) {
      requests.set(tb.getAttribute("data-request"), tb);
    });
  }

  function fmt(n) { return Number(n).toLocaleString("en-US"); }

  function clock(t) {
    var d = new Date(t * 1000);
    return isNaN(d.getTime()) ? String(t) : d.toISOString().slice(11, 23);
  }

  function setBar(svg, parts, ceiling) {
    if (!svg || !(ceiling > 0)) { return; }
    var x = 0;
    ["used", "held", "plan"].forEach(function (name) {
      var rect = svg.querySelector("rect." + name);
      if (!rect) { return; }
      var w = Math.max(0, Math.min(1000 - x, 1000 * (parts[name] || 0) / ceiling));
      rect.setAttribute("x", x.toFixed(2));
      rect.setAttribute("width", w.toFixed(2));
      x += w;
    });
  }

  // A request's block (a table of its own), or the row group itself outside the live list.
  function blockOf(tb) { return tb.closest(".req-block") || tb; }

  // A closed request stays in view a minute, then leaves the page (and its memory).
  function retire(tb, id) {
    setTimeout(function () {
      blockOf(tb).remove();
      if (requests.get(id) === tb) { requests.delete(id); }
    }, KEEP_CLOSED_MS);
  }

  function cell(row, name) { return row.querySelector("[data-cell='" + name + "']"); }

  // Changes a cell's text in place (its text node kept: no new node per event).
  function setText(row, name, value) {
    var c = cell(row, name);
    if (!c) { return; }
    var t = c.firstChild;
    if (t && t.nodeType === 3 && t === c.lastChild) {
      if (t.data !== value) { t.data = value; }
    } else {
      c.textContent = value;
    }
  }

  function agentRow(tb, agent) {
    var rows = tb.querySelectorAll("tr.agent");
    for (var i = 0; i < rows.length; i++) {
      if (rows[i].getAttribute("data-agent") === agent) { return rows[i]; }
    }
    return null;
  }

  // How the agent's latest call stands after ev. A refused extension means the agent must
  // wrap up: its next answer not cut is "wrapped_up" (a partial result), not "completed".
  function callStatus(row, ev) {
    var wrapping = row.getAttribute("data-wrap") === "1";
    if (ev.k === "fitted") { return null; }  // messages fitted away: the call runs on
    if (ev.k === "refused") {
      if (ev.note === "extend") { row.setAttribute("data-wrap", "1"); return "wrapping up"; }
      return "refused";
    }
    if (ev.k === "begin") { row.removeAttribute("data-wrap"); return "running"; }
    if (ev.k === "extend") { return "running"; }
    row.removeAttribute("data-wrap");
    if (ev.k === "finish") {
      if (ev.note === "late") { return "late"; }
      if (ev.tr) { return "cut"; }
      return wrapping ? "wrapped_up" : "completed";
    }
    if (ev.k === "release") { return "released"; }
    if (ev.k === "expire") { return "expired"; }
    return null;
  }

  var ENDINGS = ["completed", "wrapped_up", "cut", "late", "refused"];

  function tally(row, status) {
    if (ENDINGS.indexOf(status) < 0) { return; }
    var key = "data-" + status;
    var n = Number(row.getAttribute(key) || "0") + 1;
    row.setAttribute(key, String(n));
    var parts = [];
    ENDINGS.forEach(function (s) {
      var k = Number(row.getAttribute("data-" + s) || "0");
      if (k) { parts.push(s + " " + k); }
    });
    setText(row, "outcomes", parts.join(" \u00b7 "));
    if (status === "cut") { row.classList.add("is-cut"); }
  }

  function updateRequest(tb, ev) {
    if (ev.k === "refused") { noteRefused(tb, ev); return; }
    var ceiling = Number(tb.getAttribute("data-ceiling"));
    var req = tb.querySelector("tr.req");
    var held = Math.max(0, ceiling - ev.f - ev.n);
    tb.setAttribute("data-free", String(ev.f));
    tb.setAttribute("data-consumed", String(ev.n));
    tb.setAttribute("data-status", ev.s);
    if (req) {
      setText(req, "used", fmt(ev.n));
      setText(req, "held", fmt(held));
      setText(req, "free", fmt(ev.f));
      setText(req, "status", ev.s);
      setBar(req.querySelector("svg.bar"), { used: ev.n, held: held, plan: 0 }, ceiling);
    }
    if (ev.s !== "open" && !tb.classList.contains("closed")) {
      tb.classList.add("closed");
      retire(tb, ev.r);
    }
    if (!ev.a) { return; }
    var row = agentRow(tb, ev.a);
    if (!row) { return; }
    var alloc = Number(row.getAttribute("data-allocation") || "0");
    var plan = Math.max(0, alloc - ev.u - ev.g);
    row.setAttribute("data-used", String(ev.u));
    row.setAttribute("data-held", String(ev.g));
    setText(row, "used", fmt(ev.u));
    setText(row, "held", fmt(ev.g));
    setText(row, "plan", fmt(plan));
    setBar(row.querySelector("svg.bar"), { used: ev.u, held: ev.g, plan: plan }, ceiling);
    if (ev.k === "begin") {
      var calls = Number(row.getAttribute("data-calls") || "0") + 1;
      row.setAttribute("data-calls", String(calls));
      setText(row, "calls", fmt(calls));
    }
    var status = callStatus(row, ev);
    if (status) {
      row.setAttribute("data-status", status);
      setText(row, "status", status);
      tally(row, status);
    }
  }

  // A note (a begin or an extension refused) changes no figure: only the agent's status.
  function noteRefused(tb, ev) {
    var row = agentRow(tb, ev.a);
    if (!row) { return; }
    var status = callStatus(row, ev);
    row.setAttribute("data-status", status);
    setText(row, "status", status);
    tally(row, status);
  }

  function insert(tb) {
    var list = document.getElementById("requests");
    var skeleton = document.getElementById("request-block");
    if (!list || !skeleton) { return; }
    var block = skeleton.content.firstElementChild.cloneNode(true);
    var depth = Number(tb.getAttribute("data-depth"));
    block.setAttribute("data-depth", String(depth));
    block.querySelector("table").appendChild(tb);
    var parentId = tb.getAttribute("data-parent");
    var parent = parentId ? requests.get(parentId) : null;
    if (parent) {
      var top = Number(parent.getAttribute("data-depth"));
      var after = blockOf(parent);
      while (after.nextElementSibling &&
             Number(after.nextElementSibling.getAttribute("data-depth")) > top) {
        after = after.nextElementSibling;
      }
      after.after(block);
    } else {
      list.appendChild(block);
    }
    var empty = document.getElementById("empty");
    if (empty) { empty.hidden = true; }
    list.hidden = false;
  }

  // Feed cursors: "17" (memory store) or "1700000000000-3" (Redis): compared as numbers.
  function later(a, b) {
    var x = String(a).split("-"), y = String(b).split("-");
    for (var i = 0; i < Math.max(x.length, y.length); i++) {
      var p = Number(x[i] || 0), q = Number(y[i] || 0);
      if (p !== q) { return p > q; }
    }
    return false;
  }

  function untally(row, status) {
    var n = Number(row.getAttribute("data-" + status) || "0");
    if (n > 0) { row.setAttribute("data-" + status, String(n - 1)); }
  }

  // Events that came while a request's rows were being fetched. The rows carry the feed
  // cursor they were drawn at: later events apply in full; earlier ones are already in the
  // figures, but the rows are drawn from the ledger's events alone (the request's open
  // brought every one of its notes here), so the statuses and notes are replayed.
  function replay(tb, held) {
    var at = tb.getAttribute("data-cursor") || "0";
    held.forEach(function (ev) {
      if (later(ev.c, at)) { updateRequest(tb, ev); return; }
      var row = ev.a ? agentRow(tb, ev.a) : null;
      if (!row) { return; }
      var status = callStatus(row, ev);
      if (!status) { return; }
      row.setAttribute("data-status", status);
      setText(row, "status", status);
      if (status === "refused") { tally(row, status); }
      if (ev.k === "finish" && status === "wrapped_up") {
        untally(row, "completed");
        tally(row, status);
      }
    });
  }

  // A request not on the page yet: fetch its rows, keeping what arrives meanwhile.
  function fetchRequest(id) {
    if (!fragment || pending.has(id)) { return; }
    pending.set(id, []);
    fetch(fragment + "/" + encodeURIComponent(id), { credentials: "same-origin" })
      .then(function (r) { return r.ok ? r.text() : ""; })
      .then(function (html) {
        var t = document.createElement("template");
        t.innerHTML = html.trim();
        var tb = t.content.firstElementChild;
        if (!tb || requests.has(id)) { return; }
        insert(tb);
        requests.set(id, tb);
        var closed = tb.classList.contains("closed");
        replay(tb, pending.get(id) || []);
        if (closed) { retire(tb, id); }
      })
      .finally(function () { pending.delete(id); });
  }

  function timeline(ev) {
    var tbody = document.getElementById("timeline-rows");
    if (!tbody || ev.r !== pageRequest) { return; }
    var tr = document.createElement("tr");
    var note = ev.k === "fitted"
      ? ev.note + " message(s) dropped or shortened to fit the grant"
      : ev.k === "begin" && ev.note ? "model " + ev.note : ev.note || "";
    [clock(ev.t), ev.k, ev.a || "", ev.gid ? String(ev.gid) : "", fmt(ev.x), fmt(ev.o),
     note].forEach(function (v, i) {
      var td = document.createElement("td");
      td.textContent = v;
      if (i >= 3 && i <= 5) { td.className = "num"; }
      tr.appendChild(td);
    });
    tbody.appendChild(tr);
    var facts = { "free": fmt(ev.f), "consumed": fmt(ev.n), "status": ev.s };
    if (ev.k === "fitted") {  // its note holds the messages dropped or shortened
      var shown = document.querySelector("[data-fact='fitted-messages']");
      var before = shown ? Number(shown.textContent.replace(/,/g, "")) || 0 : 0;
      facts["fitted-messages"] = fmt(before + (Number(ev.note) || 0));
    }
    Object.keys(facts).forEach(function (k) {
      var dd = document.querySelector("[data-fact='" + k + "']");
      if (dd) { dd.textContent = facts[k]; }
    });
  }

  function announce(ev) {
    var what = null;
    var name = ev.pub || ev.r;
    if (ev.k === "finish" && ev.tr) { what = name + ": " + ev.a + " was cut"; }
    else if (ev.k === "refused") { what = name + ": " + ev.a + " was refused (" + ev.note + ")"; }
    else if (ev.k === "close") { what = name + " closed (" + ev.s + ")"; }
    else if (ev.k === "open") { what = name + " opened"; }
    if (what && announcer) { heard.push(what); }
  }

  setInterval(function () {
    if (!announcer || !heard.length) { return; }
    var last = heard.slice(-3);
    var more = heard.length - last.length;
    announcer.textContent = last.join(". ") + (more > 0 ? ". And " + more + " more." : ".");
    heard = [];
  }, 2000);

  // The pools page: its table is fetched again (at most once a second) as requests open
  // and close, since that is when pools are drawn from and given back to.
  var poolsUrl = body.getAttribute("data-pools");
  var poolsDue = false;
  var poolsBusy = false;
  function refreshPools() {
    if (!poolsUrl || poolsBusy || !poolsDue) { return; }
    poolsDue = false;
    poolsBusy = true;
    fetch(poolsUrl, { credentials: "same-origin" })
      .then(function (r) { return r.ok ? r.text() : ""; })
      .then(function (html) {
        var panel = document.getElementById("pools-panel");
        if (html && panel) {
          var t = document.createElement("template");
          t.innerHTML = html.trim();
          panel.replaceChildren(t.content);
          body.setAttribute("data-pools-refreshed", String(Date.now()));
        }
      })
      .finally(function () { poolsBusy = false; });
  }
  if (poolsUrl) { setInterval(refreshPools, 1000); }

  function handle(ev) {
    cursor = ev.c;
    timeline(ev);
    if (poolsUrl && (ev.k === "open" || ev.k === "close")) { poolsDue = true; }
    var tb = requests.get(ev.r);
    if (pending.has(ev.r)) {
      pending.get(ev.r).push(ev);
    } else if (tb) {
      updateRequest(tb, ev);
    } else if (fragment && ev.s === "open" && document.getElementById("requests")) {
      fetchRequest(ev.r);
      pending.get(ev.r).push(ev);
    }
    announce(ev);
  }

  function connect() {
    var url = stream;
    if (cursor) { url += (url.indexOf("?") < 0 ? "?" : "&") + "after=" + encodeURIComponent(cursor); }
    var source = new EventSource(url, { withCredentials: true });
    source.addEventListener("open", function () {
      if (live) { live.setAttribute("data-state", "open"); live.textContent = "Live: connected"; }
    });
    source.addEventListener("change", function (e) {
      try { handle(JSON.parse(e.data)); } catch (err) { /* a malformed event: skip it */ }
    });
    source.addEventListener("error", function () {
      if (live) { live.setAttribute("data-state", "closed"); live.textContent = "Live: reconnecting"; }
    });
  }

  index();
  connect();
})();

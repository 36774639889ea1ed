// The operator console's page: renders the snapshots the console server pushes over
// Server-Sent Events. Plain JavaScript, no library; every text goes in through textContent,
// never as HTML. The browser holds no key: buttons ask the console server, which signs.
"use strict";

(function () {
  const SVG = "http://www.w3.org/2000/svg";
  // The session's secret arrives once, in the fragment of the address the one-time link
  // redirects to (a fragment is never sent to a server). It moves to sessionStorage (per
  // origin, port included: no other local service can read it) and out of the address bar
  // and history; every /api request carries it in a header. The cookie alone is refused.
  const KEY = "exchange-console-session";
  const given = /^#s=([A-Za-z0-9_-]+)$/.exec(location.hash);
  if (given) {
    sessionStorage.setItem(KEY, given[1]);
    history.replaceState(null, "", location.pathname + location.search);
  }
  const secret = sessionStorage.getItem(KEY) || "";
  const rendered = {};  // panel -> the JSON it was last drawn from (redraw only on change)

  // -- small helpers -----------------------------------------------------------------------

  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v === null || v === undefined || v === false) continue;
      if (k === "class") node.className = v;
      else if (k === "text") node.textContent = v;
      else if (k.startsWith("data-")) node.setAttribute(k, v);
      else if (k === "title" || k === "type" || k === "aria-label") node.setAttribute(k, v);
      else node[k] = v;
    }
    for (const c of children) if (c !== null && c !== undefined) node.append(c);
    return node;
  }
  function svg(tag, attrs) {
    const node = document.createElementNS(SVG, tag);
    for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, String(v));
    return node;
  }
  const dash = "—";
  function num(v, digits) {
    if (v === null || v === undefined) return dash;
    return Number(v).toLocaleString("en-US", {maximumFractionDigits: digits ?? 0});
  }
  function bytes(v) {
    if (v === null || v === undefined) return dash;
    const units = ["B", "KiB", "MiB", "GiB"];
    let i = 0;
    while (v >= 1024 && i < units.length - 1) { v /= 1024; i++; }
    return v.toFixed(i ? 1 : 0) + " " + units[i];
  }
  function ago(seconds) {
    if (seconds === null || seconds === undefined) return dash;
    if (seconds < 60) return Math.round(seconds) + " s ago";
    if (seconds < 3600) return Math.round(seconds / 60) + " min ago";
    if (seconds < 86400) return (seconds / 3600).toFixed(1) + " h ago";
    return Math.round(seconds / 86400) + " d ago";
  }
  function duration(seconds) {
    if (seconds === null || seconds === undefined) return dash;
    if (seconds < 120) return Math.round(seconds) + " s";
    if (seconds < 7200) return Math.round(seconds / 60) + " min";
    if (seconds < 172800) return (seconds / 3600).toFixed(1) + " h";
    return Math.round(seconds / 86400) + " d";
  }
  function clock(t) {
    if (!t) return dash;
    return new Date(t * 1000).toLocaleTimeString("en-GB", {hour12: false});
  }
  function period(iso) {
    // an ISO 8601 duration of seconds (PT3600S) as people say it
    const m = /^PT(\d+)S$/.exec(iso || "");
    if (!m) return iso || dash;
    const s = Number(m[1]);
    if (s % 86400 === 0) return s === 86400 ? "day" : s / 86400 + " days";
    if (s % 3600 === 0) return s === 3600 ? "hour" : s / 3600 + " hours";
    return duration(s);
  }
  function day(text) { return text ? String(text).slice(0, 10) : dash; }
  function short(id, n) { return id && id.length > n ? id.slice(0, n) + "…" : (id || dash); }
  function changed(panel, value) {
    const key = JSON.stringify(value);
    if (rendered[panel] === key) return false;
    rendered[panel] = key;
    return true;
  }
  function fill(tbody, rows, columns, emptyText) {
    tbody.replaceChildren(...(rows.length ? rows : [
      el("tr", {class: "empty"}, el("td", {colSpan: columns, text: emptyText}))]));
  }
  function badge(text, kind, title) {
    return el("span", {class: "badge" + (kind ? " " + kind : ""), text: text, title: title});
  }
  function expiryBadge(cert) {
    if (!cert) return el("span", {class: "muted", text: dash});
    const when = new Date(cert.expires * 1000).toISOString().slice(0, 10);
    if (cert.revoked) return badge("revoked", "bad cert-expiry", "the CRL lists it");
    if (cert.expired) return badge("expired " + when, "bad cert-expiry", "expired");
    const days = Math.floor(cert.days);
    const text = when + " (" + days + " d)";
    return badge(text, cert.warn ? "warn cert-expiry" : "ok cert-expiry",
                 cert.warn ? "expires within 30 days" : "valid");
  }
  function connected(v) {
    if (v === null || v === undefined) return el("span", {class: "muted", text: dash});
    return v ? badge("connected", "ok") : badge("offline");
  }

  // -- charts (inline SVG) -----------------------------------------------------------------

  function lineChart(series, opts) {
    // series: [{points: [[t, v], ...], color}], y from 0 to opts.max (or the data's max);
    // drawn at the box's own pixel width, so text is never stretched (redrawn on resize)
    const W = Math.max(200, Math.round(opts.width || 600)), H = opts.height || 120;
    const L = 34, R = 8, T = 8, B = 16;
    const box = svg("svg", {viewBox: `0 0 ${W} ${H}`, width: W, height: H, role: "img",
                            "aria-label": opts.label || "chart"});
    const all = series.flatMap(s => s.points.filter(p => p[1] !== null));
    const ts = all.map(p => p[0]);
    const t0 = ts.length ? Math.min(...ts) : 0, t1 = ts.length ? Math.max(...ts) : 1;
    let ymax = opts.max ?? Math.max(1, ...all.map(p => p[1]));
    if (!(ymax > 0)) ymax = 1;
    const x = t => L + (t1 > t0 ? (t - t0) / (t1 - t0) : 1) * (W - L - R);
    const y = v => T + (1 - v / ymax) * (H - T - B);
    box.append(svg("line", {class: "axis", x1: L, y1: y(0), x2: W - R, y2: y(0)}));
    box.append(svg("line", {class: "axis", x1: L, y1: y(ymax), x2: W - R, y2: y(ymax)}));
    const fmt = v => (opts.max === 1 ? v.toFixed(1) : num(v, 0));
    box.append(Object.assign(svg("text", {class: "axis-label", x: 2, y: y(ymax) + 4}),
                             {textContent: fmt(ymax)}));
    box.append(Object.assign(svg("text", {class: "axis-label", x: 2, y: y(0)}),
                             {textContent: fmt(0)}));
    if (ts.length) {
      const span = t1 - t0;
      box.append(Object.assign(svg("text", {class: "axis-label", x: L, y: H - 4}),
                               {textContent: span > 0 ? "−" + duration(span) : "now"}));
      box.append(Object.assign(svg("text", {class: "axis-label", x: W - R - 22, y: H - 4}),
                               {textContent: "now"}));
    }
    for (const s of series) {
      const pts = s.points.filter(p => p[1] !== null);
      if (!pts.length) continue;
      if (pts.length === 1) {
        box.append(svg("circle", {cx: x(pts[0][0]), cy: y(pts[0][1]), r: 2.5, fill: s.color}));
        continue;
      }
      box.append(svg("polyline", {class: "line", stroke: s.color,
        points: pts.map(p => x(p[0]).toFixed(1) + "," + y(p[1]).toFixed(1)).join(" ")}));
    }
    return box;
  }

  // -- panels ------------------------------------------------------------------------------

  function overview(o) {
    const set = (k, text) => {
      for (const node of document.querySelectorAll(`#overview [data-k="${k}"]`)) {
        node.textContent = text;
      }
    };
    set("in_per_s", num(o.in_per_s, 1));
    set("out_per_s", num(o.out_per_s, 1));
    set("accepted", num(o.accepted));
    set("rejected", num(o.rejected));
    set("log_size", num(o.log_size));
    set("checkpoint_age_s", "last checkpoint " + ago(o.checkpoint_age_s));
    set("cpu_percent", o.cpu_percent === null ? dash : num(o.cpu_percent, 1) + " %");
    set("rss_bytes", "RSS " + bytes(o.rss_bytes) +
        (o.open_fds !== null ? ", " + num(o.open_fds) + " fds" : ""));
    set("store", o.store || dash);
    const c = o.cluster;
    set("cluster", c ? (c.connected ? "connected to " + (c.server || "?") : "disconnected") +
        ", " + c.servers + " servers" + (c.replicas ? ", R" + c.replicas : "") +
        (c.sequencer ? ", sequencer" : "")
        : (o.store === "sqlite" ? "one file, WAL" : dash));
    set("broker", o.broker || dash);
    set("uptime_s", "up " + duration(o.uptime_s) +
        (o.connected_nodes !== null ? ", " + num(o.connected_nodes) + " nodes connected" : ""));
    if (changed("rates", o.rates)) {
      const box = document.getElementById("rate-chart");
      box.replaceChildren(lineChart([
        {points: o.rates.map(p => [p[0], p[1]]), color: "#1f5fbf"},
        {points: o.rates.map(p => [p[0], p[2]]), color: "#d9822b"},
      ], {label: "records per second in and out", height: 110, width: box.clientWidth}));
    }
  }

  function nodes(list, crl) {
    const crlText = document.getElementById("crl");
    crlText.replaceChildren("CRL next update ", crl ? expiryBadge(crl) : dash);
    if (!changed("nodes", list)) return;
    const rows = list.map(n => el("tr", {"data-node": n.id},
      el("td", {}, el("code", {text: n.id})),
      el("td", {text: n.roles.join(", ") || dash}),
      el("td", {}, connected(n.connected)),
      el("td", {text: n.last_seen ? clock(n.last_seen) : dash}),
      el("td", {class: "cert"}, expiryBadge(n.certificate)),
      el("td", {class: "num", text: num(n.published)}),
      el("td", {class: "codes"}, ...(Object.keys(n.rejected).length
        ? Object.entries(n.rejected).map(([code, k]) => badge(code + " " + num(k), "",
                                                                "rejected: " + code))
        : [el("span", {class: "muted", text: "none"})]))));
    fill(document.getElementById("nodes-body"), rows, 7, "no nodes yet");
  }

  const PRINCIPLES = ["correct", "sufficient", "clean", "live"];
  const COLORS = {correct: "#1f5fbf", sufficient: "#8e44ad", clean: "#1a7f37", live: "#d9822b"};

  function datasets(list) {
    if (!changed("datasets", list)) return;
    const cards = list.map(d => {
      const stale = d.stale === true;
      const card = el("article", {class: "dataset" + (stale ? " stale" : ""),
                                  "data-dataset": d.name},
        el("h4", {}, d.title.vi || d.name, " ",
           stale ? badge("stale", "warn stale-badge", "no record within its update interval")
                 : badge("live", "ok")),
        el("div", {class: "en", text: (d.title.en || "") + " · " + d.name}),
        el("div", {class: "meta"},
           el("span", {text: "owner " + (d.publisher || dash)}),
           el("span", {text: (d.classification || dash) + " data", title: d.category || ""}),
           el("span", {text: "updated every " + period(d.periodicity)}),
           el("span", {text: "v" + (d.version ?? dash)}),
           el("span", {class: "rate", text: num(d.rate, 1) + " rec/s"}),
           el("span", {text: num(d.accepted) + " accepted, " + num(d.rejected) + " rejected"}),
           el("span", {text: "updated " + ago(d.seconds_since_update)})),
        el("div", {class: "scores"}, ...PRINCIPLES.map(p => el("div", {class: "score " + p},
           el("div", {class: "v", text: d.scores[p] === null ? dash : d.scores[p].toFixed(3)}),
           el("div", {class: "n", text: p})))),
        el("div", {class: "svgbox quality-chart"}));
      return card;
    });
    document.getElementById("datasets-body").replaceChildren(...cards);
    // charts after the cards are laid out: they are drawn at their box's width
    list.forEach((d, n) => {
      const box = cards[n].querySelector(".quality-chart");
      box.replaceChildren(lineChart(PRINCIPLES.map((p, i) => ({
        points: d.history.map(h => [h[0], h[i + 1]]), color: COLORS[p]})),
        {max: 1, height: 90, width: box.clientWidth,
         label: d.name + " quality scores over time"}));
    });
  }

  function actionButtons(a) {
    const labels = {countersign: "Approve", reject: "Reject", revoke: "Revoke"};
    const kinds = {countersign: "primary", reject: "danger", revoke: "danger"};
    return el("div", {class: "actions"}, ...a.actions.map(action => el("button", {
      type: "button", class: kinds[action], text: labels[action], "data-action": action,
      "data-agreement": a.id, title: action === "countersign"
        ? "countersign as the operator (signed by the console server with your key)"
        : action === "reject" ? "refuse: signed as a revocation" : "revoke now"})));
  }

  function agreements(ag) {
    if (!changed("agreements", ag)) return;
    const pending = ag.pending.map(a => el("tr", {"data-agreement": a.id},
      el("td", {}, el("code", {text: a.id})),
      el("td", {text: a.dataset}),
      el("td", {}, el("code", {text: a.subscriber})),
      el("td", {class: "wrap", text: a.purpose, title: a.legal_basis}),
      el("td", {}, badge(a.state === "approved" ? "awaiting operator" : "awaiting owner",
                         a.state === "approved" ? "warn" : "")),
      el("td", {text: day(a.expires)}),
      el("td", {}, actionButtons(a))));
    fill(document.getElementById("pending-body"), pending, 7, "nothing pending");
    const now = Date.now();
    const active = ag.active.map(a => {
      const left = (Date.parse(a.expires) - now) / 86400000;
      return el("tr", {"data-agreement": a.id},
        el("td", {}, el("code", {text: a.id})),
        el("td", {text: a.dataset}),
        el("td", {}, el("code", {text: a.subscriber})),
        el("td", {class: "wrap", text: a.purpose, title: a.legal_basis}),
        el("td", {text: a.groups.length ? a.groups.join(", ") : "all"}),
        el("td", {}, badge(day(a.expires), left <= 30 ? "warn" : "", Math.floor(left) + " days left")),
        el("td", {}, actionButtons(a)));
    });
    fill(document.getElementById("active-body"), active, 7, "no active agreements");
  }

  function subscriptions(list) {
    if (!changed("subscriptions", list)) return;
    const rows = list.map(s => el("tr", {"data-subscription": s.node + "/" + s.dataset + "/" + s.name},
      el("td", {}, el("code", {text: s.node})),
      el("td", {text: s.dataset}),
      el("td", {text: s.name}),
      el("td", {class: "num lag", text: num(s.lag)}),
      el("td", {class: "num", text: s.lag_s === null ? dash : num(s.lag_s, 2)}),
      el("td", {class: "num", text: num(s.credits)}),
      el("td", {class: "num", text: num(s.redeliveries)}),
      el("td", {}, connected(s.connected))));
    fill(document.getElementById("subscriptions-body"), rows, 8, "no subscriptions");
  }

  function log(l) {
    document.getElementById("log-size").textContent = num(l.size);
    document.getElementById("log-root").textContent = l.root || dash;
    showVerification(l.verification);
    logWarnings(l);
    if (!changed("log", l.checkpoints)) return;
    const box = document.getElementById("log-chart");
    box.replaceChildren(lineChart([
      {points: l.checkpoints.map(c => [c[0], c[1]]), color: "#1f5fbf"}],
      {label: "log size over time", height: 110, width: box.clientWidth}));
    const rows = l.checkpoints.slice(-20).reverse().map(c => el("tr", {},
      el("td", {text: clock(c[0])}), el("td", {class: "num", text: num(c[1])}),
      el("td", {}, el("code", {text: short(c[2], 24), title: c[2]}))));
    fill(document.getElementById("checkpoints-body"), rows, 3, "no checkpoint yet");
  }

  function showVerification(v) {
    const out = document.getElementById("verify-result");
    if (!v) return;
    const key = JSON.stringify(v);
    if (out.dataset.shown === key) return;
    out.dataset.shown = key;
    const styles = {verified: "ok", baseline: "info"};
    const words = {verified: "✔ verified: ", baseline: "● baseline recorded: "};
    out.className = "verify " + (styles[v.status] || "bad");
    const from = v.from ? v.from.size : dash, to = v.to ? v.to.size : dash;
    out.textContent = (words[v.status] || "✘ failed: ") + "checkpoint " +
      (v.status === "baseline" ? to : from + " → " + to) + " at " + clock(v.at) + ". " +
      (v.detail || "");
  }

  function logWarnings(l) {
    // a second root for a size, or a smaller size than one seen: the broker showed the
    // console two histories (or lost entries); the first findings stay on the page
    const box = document.getElementById("log-warnings");
    const list = l.warnings || [];
    box.hidden = !list.length;
    if (!changed("log-warnings", list)) return;
    const more = (l.warnings_total || 0) - list.length;
    box.replaceChildren(...list.map(w => el("p", {class: "log-warning", "data-code": w.code},
      el("strong", {text: w.code === "split_view" ? "✘ split view" : "✘ the log shrank"}),
      " (" + w.code + ") at " + clock(w.at) + ": " + w.detail)),
      ...(more > 0 ? [el("p", {class: "log-warning", text: more + " more"})] : []));
  }

  let last = null;
  function render(s) {
    last = s;
    const errors = document.getElementById("errors");
    const entries = Object.entries(s.errors || {});
    errors.hidden = !entries.length;
    errors.textContent = entries.map(([k, v]) => k + ": " + v).join(" · ");
    overview(s.overview);
    nodes(s.nodes, s.crl);
    datasets(s.datasets);
    agreements(s.agreements);
    subscriptions(s.subscriptions);
    log(s.log);
    document.getElementById("status-text").textContent = "updated " + clock(s.at);
    document.body.dataset.updated = String(s.at);
  }

  // -- actions -----------------------------------------------------------------------------

  async function post(path, body) {
    const resp = await fetch(path, {method: "POST", credentials: "same-origin",
      headers: {"Content-Type": "application/json", "X-Console-Session": secret},
      body: JSON.stringify(body || {})});
    let data = {};
    try { data = await resp.json(); } catch (e) { data = {detail: resp.statusText}; }
    return {ok: resp.ok, status: resp.status, data: data};
  }

  document.addEventListener("click", async ev => {
    const button = ev.target.closest("button");
    if (!button) return;
    if (button.id === "verify") {
      button.disabled = true;
      const out = document.getElementById("verify-result");
      out.className = "verify";
      out.textContent = "asking the broker for a consistency proof…";
      try {
        const {data} = await post("/api/verify");
        delete out.dataset.shown;
        if (data.status) showVerification(data);
        else { out.className = "verify bad"; out.textContent = "✘ " + (data.detail || "failed"); }
      } finally { button.disabled = false; }
      return;
    }
    const action = button.dataset.action, id = button.dataset.agreement;
    if (!action || !id) return;
    const status = document.getElementById("action-status");
    button.disabled = true;
    status.className = "action-status";
    status.textContent = action + " " + id + "…";
    const {ok, data} = await post(`/api/agreements/${encodeURIComponent(id)}/${action}`);
    status.className = "action-status " + (ok ? "ok" : "bad");
    status.textContent = ok ? `${id} is now ${data.state}` : `${id}: ${data.detail || data.error}`;
    if (!ok) button.disabled = false;
  });

  // -- live updates ------------------------------------------------------------------------

  let resizing = false;
  window.addEventListener("resize", () => {
    if (resizing || !last) return;
    resizing = true;
    requestAnimationFrame(() => {
      resizing = false;
      for (const panel of ["rates", "datasets", "log"]) delete rendered[panel];
      render(last);
    });
  });

  // EventSource cannot send a header: each connection takes a single-use ticket, asked for
  // with the secret; on an error the page asks for a new ticket rather than letting the
  // browser retry the spent one
  const dot = document.getElementById("live-dot");
  const statusText = document.getElementById("status-text");
  function down(text) {
    dot.className = "dot down";
    statusText.textContent = text;
  }
  async function connect() {
    let answer;
    try {
      answer = await post("/api/ticket");
    } catch (e) {
      down("reconnecting…");
      setTimeout(connect, 2000);
      return;
    }
    if (answer.status === 403) {
      down(secret ? "session ended: open the link the console printed again"
                  : "no session in this tab: open the link the console printed");
      return;
    }
    if (!answer.ok) {
      down("reconnecting…");
      setTimeout(connect, 2000);
      return;
    }
    const events = new EventSource("/events?ticket=" + encodeURIComponent(answer.data.ticket));
    events.addEventListener("snapshot", ev => {
      dot.className = "dot live";
      render(JSON.parse(ev.data));
    });
    events.addEventListener("error", () => {
      events.close();
      down("reconnecting…");
      setTimeout(connect, 1000);
    });
  }
  connect();
})();

"use strict";
// galaxynode dashboard: plain script, no build step, no CDN. Renders with textContent only (names, meta,
// capabilities and event data are attacker-controlled) and shows control characters (ANSI escapes) as \xNN.
// The token (if the pool sets one) comes from the URL fragment #token=..., is kept in sessionStorage for
// this tab and sent as an Authorization header; live data comes from /dashboard/api/stream (Server-Sent
// Events read with fetch, because EventSource cannot send that header).

const PAGE = location.pathname.replace(/^.*\/dashboard\/?/, "").replace(/\/$/, "");
const SERIES = ["sessions", "nodes", "events_s", "heartbeats_s"];
const MAX_EVENTS = 200;
let samples = [];

(function takeToken() {  // then drop the fragment, so the token is not left on screen or in bookmarks
  const m = location.hash.match(/(?:^#|&)token=([^&]*)/);
  if (m) {
    sessionStorage.setItem("galaxynode-token", decodeURIComponent(m[1]));
    window.history.replaceState(null, "", location.pathname + location.search);
  }
})();

function headers() {
  const t = sessionStorage.getItem("galaxynode-token");
  return t ? {Authorization: "Bearer " + t} : {};
}
function visible(s) {
  return String(s).replace(/[\x00-\x1f\x7f]/g, c => "\\x" + c.charCodeAt(0).toString(16).padStart(2, "0"));
}
function el(tag, text, title) {
  const e = document.createElement(tag);
  if (text !== undefined && text !== null) e.textContent = visible(text);
  if (title) e.title = visible(title);
  return e;
}
function short(key) { return key ? (key.length > 24 ? key.slice(0, 20) + "…" + key.slice(-4) : key) : ""; }
function keyCell(key) { return el("td", short(key), key); }
function row(cells) { const tr = document.createElement("tr"); tr.append(...cells); return tr; }
function pairs(obj) { return Object.entries(obj || {}).map(([k, v]) => k + "=" + v).join(" "); }
function duration(s) {
  s = Math.round(s);
  const d = Math.floor(s / 86400), h = Math.floor(s % 86400 / 3600), m = Math.floor(s % 3600 / 60);
  return (d ? d + "d " : "") + (d || h ? h + "h " : "") + (d || h || m ? m + "m " : "") + (s % 60) + "s";
}
function sleep(ms) { return new Promise(r => setTimeout(r, ms)); }
function setLive(on, text) {
  const e = document.getElementById("live");
  e.className = on ? "on" : "off";
  e.textContent = text || (on ? "live" : "reconnecting");
}

async function get(path) {
  const r = await fetch(path, {cache: "no-store", headers: headers()});
  if (r.status === 401) { document.getElementById("auth").hidden = false; setLive(false, "no token"); }
  if (!r.ok) throw new Error(path + ": " + r.status);
  return r.json();
}

// One SSE stream, read with fetch; reconnects with backoff until `signal` aborts it.
async function stream(query, handlers, signal) {
  let delay = 1000;
  while (!signal.aborted) {
    try {
      const r = await fetch("api/stream?" + query, {cache: "no-store", headers: headers(), signal});
      if (r.status === 401) { document.getElementById("auth").hidden = false; setLive(false, "no token"); return; }
      if (!r.ok) throw new Error("stream: " + r.status);
      setLive(true);
      delay = 1000;
      const reader = r.body.getReader(), decoder = new TextDecoder();
      let buf = "";
      for (;;) {
        const {value, done} = await reader.read();
        if (done) break;
        buf += decoder.decode(value, {stream: true});
        let i;
        while ((i = buf.indexOf("\n\n")) >= 0) {
          const block = buf.slice(0, i);
          buf = buf.slice(i + 2);
          let name = "message", data = "";
          for (const line of block.split("\n")) {
            if (line.startsWith("event: ")) name = line.slice(7);
            else if (line.startsWith("data: ")) data += line.slice(6);
          }
          if (data && handlers[name]) handlers[name](JSON.parse(data));
        }
      }
    } catch (e) {
      if (signal.aborted) return;
    }
    setLive(false);
    await sleep(delay);
    delay = Math.min(delay * 2, 30000);
  }
}

// --- overview ---------------------------------------------------------------------------------------------
function facts(o) {
  document.getElementById("title-name").textContent = o.name && o.name !== "galaxynode" ? "· " + visible(o.name) : "";
  document.getElementById("nav-pools").hidden = o.role !== "mainnet";
  document.getElementById("nav-nodes").hidden = o.role === "mainnet";
  if (PAGE !== "") return;
  const s = o.sample || {}, registered = o.role === "mainnet" ? "pools" : "nodes";  // a main net registers pools
  document.getElementById("label-nodes").textContent = registered;
  const rows = [["pool key", o.key, "key"], ["stellar", o.stellar || "", "stellar"], ["network", o.network, "network"],
    ["role", o.role, "role"], ["version", o.version, "version"], ["uptime", duration(o.uptime), "uptime"],
    ["sessions", o.sessions, "sessions"], [registered, o.nodes, "nodes"], ["peers", o.peers, "peers"],
    ["events", o.events, "events"], ["events/s", s.events_s ?? "", "events_s"],
    ["heartbeats/s", s.heartbeats_s ?? "", "heartbeats_s"], ["ready", o.ready === undefined ? "" : String(o.ready), "ready"]];
  if (o.worker !== null && o.worker !== undefined) rows.push(["worker", o.worker, "worker"]);
  const dl = document.getElementById("facts");
  dl.replaceChildren();
  for (const [k, v, id] of rows) { const dd = el("dd", String(v)); dd.id = "v-" + id; dl.append(el("dt", k), dd); }
  const ul = document.getElementById("readiness");
  ul.replaceChildren();
  for (const [name, c] of Object.entries(o.readiness || {})) {
    const li = el("li", name + (c.reason ? ": " + c.reason : ""));
    li.className = c.ok ? "ok" : "bad";
    ul.append(li);
  }
  const word = document.getElementById("ready-word");
  const failing = Object.keys(o.not_ready || {});
  word.textContent = o.ready ? "ready" : "not ready (" + failing.join(", ") + ")";
  word.className = o.ready ? "ok" : "bad";
}

function chart(name) {
  const canvas = document.getElementById("chart-" + name);
  const ratio = window.devicePixelRatio || 1, w = canvas.clientWidth || 320, h = canvas.clientHeight || 90;
  if (canvas.width !== Math.round(w * ratio)) { canvas.width = Math.round(w * ratio); canvas.height = Math.round(h * ratio); }
  const ctx = canvas.getContext("2d");
  ctx.setTransform(ratio, 0, 0, ratio, 0, 0);
  ctx.clearRect(0, 0, w, h);
  const values = samples.map(s => s[name] || 0);
  const last = values.length ? values[values.length - 1] : 0;
  document.getElementById("c-" + name).textContent = String(last);
  const max = Math.max(1, ...values);
  ctx.fillStyle = "#888";
  ctx.font = "10px sans-serif";
  ctx.fillText(String(max), 2, 10);
  ctx.strokeStyle = "#ddd";
  ctx.beginPath(); ctx.moveTo(0, h - 0.5); ctx.lineTo(w, h - 0.5); ctx.stroke();
  if (values.length < 2) return;
  const step = w / (300 - 1), x0 = w - step * (values.length - 1);
  ctx.strokeStyle = "#2a6fdb";
  ctx.lineWidth = 1.5;
  ctx.beginPath();
  values.forEach((v, i) => { const x = x0 + i * step, y = h - 2 - (h - 14) * v / max; i ? ctx.lineTo(x, y) : ctx.moveTo(x, y); });
  ctx.stroke();
}

function overview(o) {
  if (o.history) samples = o.history.slice(-300);
  else if (o.sample && (!samples.length || samples[samples.length - 1].t !== o.sample.t)) {
    samples.push(o.sample);
    if (samples.length > 300) samples.shift();
  }
  facts(o);
  if (PAGE === "") SERIES.forEach(chart);
}

// --- tables -----------------------------------------------------------------------------------------------
// A table paged by the API's cursor: `refresh` reloads the page shown; first/next move.
function pager(name, load) {
  let cursor = null, next = null;
  const p = {refresh: () => load(cursor).then(c => { next = c; document.getElementById(name + "-next").disabled = !c; }),
             reset: () => { cursor = null; }};
  document.getElementById(name + "-first").addEventListener("click", () => { cursor = null; p.refresh().catch(() => {}); });
  document.getElementById(name + "-next").addEventListener("click", () => { if (next) { cursor = next; p.refresh().catch(() => {}); } });
  return p;
}

async function nodes(cursor) {
  const q = new URLSearchParams();
  const cap = document.getElementById("cap").value.trim(), meta = document.getElementById("meta").value.trim();
  if (cap) q.set("cap", cap);
  if (meta) q.set("meta", meta);
  if (cursor) q.set("cursor", cursor);
  const r = await get("api/nodes?" + q);
  const body = document.getElementById("nodes");
  body.replaceChildren(...(r.nodes || []).map(n => row([keyCell(n.key), el("td", n.capabilities.join(",")),
    el("td", pairs(n.meta)), el("td", String(n.lease_left_s)),
    el("td", r.worker === null || r.worker === undefined ? (n.session ? "here" : "-")
                                                          : (n.worker === null ? "other worker" : "worker " + n.worker))])));
  return r.cursor;
}

async function pools(cursor) {
  const r = await get("api/pools" + (cursor ? "?cursor=" + cursor : ""));
  document.getElementById("pools").replaceChildren(...(r.pools || []).map(p => row([el("td", p.name), keyCell(p.key),
    el("td", p.network), el("td", (p.endpoints || []).join(" ")), el("td", p.nodes ?? ""),
    el("td", p.capabilities.join(",")), el("td", p.prefix), el("td", String(p.lease_left_s))])));
  return r.cursor;
}

async function peers() {
  const r = await get("api/peers");
  document.getElementById("peers").replaceChildren(...r.peers.map(p => {
    const d = p.descriptor;
    return row([keyCell(p.key || ""), el("td", p.name || (d && d.name) || ""), el("td", p.state), el("td", p.direction),
      el("td", p.standing || ""), el("td", [p.url, p.remote].filter(Boolean).join(" ")),
      el("td", p.answered === undefined ? "" : p.answered + " / " + p.missed), el("td", p.last_error || ""),
      el("td", d ? (d.endpoints.join(" ") + " · " + d.nodes + " nodes · expires in " +
                    duration(Math.max(0, (d.expires - Date.now()) / 1000))) : "")]);
  }));
}

async function bans() {
  const r = await get("api/bans");
  document.getElementById("bans").replaceChildren(...r.bans.map(b => row([el("td", b.kind),
    b.kind === "key" ? keyCell(b.subject) : el("td", b.subject), el("td", b.by), el("td", b.reason),
    el("td", b.left_s === null ? "never" : duration(b.left_s))])));
}

// --- events -----------------------------------------------------------------------------------------------
// One line per event: k=v, keys shortened, lists joined; the full JSON is the cell's title.
function summary(data) {
  const one = v => Array.isArray(v) ? v.map(one).join(",")
    : v && typeof v === "object" ? "{" + Object.entries(v).map(([k, x]) => k + "=" + one(x)).join(" ") + "}"
    : typeof v === "string" && v.startsWith("ed25519:") ? short(v) : String(v);
  return Object.entries(data || {}).map(([k, v]) => k + "=" + one(v)).join(" ");
}
const shown = new Set();
function addEvent(ev) {
  if (shown.has(ev.id)) return;
  shown.add(ev.id);
  const body = document.getElementById("events");
  const tr = row([el("td", new Date(ev.ts).toLocaleTimeString()), el("td", ev.topic), keyCell(ev.origin || "here"),
    el("td", summary(ev.data), JSON.stringify(ev.data))]);
  tr.dataset.topic = ev.topic;
  body.prepend(tr);
  while (body.children.length > MAX_EVENTS) body.lastElementChild.remove();
  if (ev.lost) document.getElementById("events-note").textContent = ev.lost + " events lost (this page fell behind)";
}
let eventsAbort = null;
async function events() {
  if (eventsAbort) eventsAbort.abort();
  eventsAbort = new AbortController();
  const topics = document.getElementById("topics").value.replace(/\s+/g, "");
  const note = document.getElementById("events-note");
  document.getElementById("events").replaceChildren();
  shown.clear();
  try {
    const r = await get("api/events?topics=" + encodeURIComponent(topics));
    note.textContent = "";
    r.events.forEach(addEvent);
  } catch (e) {
    note.textContent = "bad topic filter (dotted segments of a-z0-9_-, * for one, # for the rest; at most 8)";
    return;
  }
  stream("overview=0&topics=" + encodeURIComponent(topics), {event: addEvent}, eventsAbort.signal);
}

// --- wiring -----------------------------------------------------------------------------------------------
function debounce(fn, ms) { let t; return () => { clearTimeout(t); t = setTimeout(fn, ms); }; }

document.addEventListener("DOMContentLoaded", () => {
  const section = document.getElementById("page-" + PAGE) || document.getElementById("page-");
  section.hidden = false;
  for (const a of document.querySelectorAll("nav a")) if (a.dataset.nav === PAGE) a.className = "current";
  const poll = {nodes: null, pools: null, peers, bans}[PAGE];
  if (PAGE === "") {
    stream("topics=", {overview}, new AbortController().signal);
    window.addEventListener("resize", () => SERIES.forEach(chart));
    return;
  }
  get("api/overview").then(facts).catch(() => {});
  if (PAGE === "nodes" || PAGE === "pools") {
    const p = pager(PAGE, PAGE === "nodes" ? nodes : pools);
    if (PAGE === "nodes") {
      const again = debounce(() => { p.reset(); p.refresh().catch(() => {}); }, 200);
      document.getElementById("cap").addEventListener("input", again);
      document.getElementById("meta").addEventListener("input", again);
    }
    const tick = () => p.refresh().then(() => setLive(true), () => setLive(false));
    tick(); setInterval(tick, 2000);
  } else if (poll) {
    const tick = () => poll().then(() => setLive(true), () => setLive(false));
    tick(); setInterval(tick, 2000);
  } else if (PAGE === "events") {
    document.getElementById("topics").addEventListener("input", debounce(events, 400));
    events();
  }
});

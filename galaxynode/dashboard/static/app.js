"use strict";
// Renders with textContent only: names, meta and capabilities are attacker-controlled.
function el(tag, text) { const e = document.createElement(tag); e.textContent = text; return e; }
async function get(path) { const r = await fetch(path, {cache: "no-store"}); return r.json(); }
async function overview() {
  const o = await get("api/overview");
  const dl = document.getElementById("facts");
  const rows = [["pool key", o.key], ["stellar", o.stellar || ""], ["network", o.network],
    ["version", o.version], ["uptime (s)", o.uptime], ["nodes", o.nodes], ["peers", o.peers],
    ["events", o.events], ["ready", o.ready === undefined ? "" : String(o.ready)]];
  dl.replaceChildren();
  for (const [k, v] of rows) { const dd = el("dd", String(v)); dd.id = "v-" + k.split(" ")[0]; dl.append(el("dt", k), dd); }
}
async function nodes() {
  const q = new URLSearchParams();
  const cap = document.getElementById("cap").value, meta = document.getElementById("meta").value;
  if (cap) q.set("cap", cap);
  if (meta) q.set("meta", meta);
  const r = await get("api/nodes?" + q);
  const body = document.getElementById("nodes");
  body.replaceChildren();
  for (const n of r.nodes || []) {
    const tr = document.createElement("tr");
    tr.append(el("td", n.key), el("td", n.capabilities.join(",")),
      el("td", Object.entries(n.meta).map(([k, v]) => k + "=" + v).join(" ")), el("td", String(n.lease_left_s)));
    body.append(tr);
  }
}
function tick() { overview().catch(() => {}); nodes().catch(() => {}); }
document.addEventListener("DOMContentLoaded", () => {
  document.getElementById("cap").addEventListener("input", tick);
  document.getElementById("meta").addEventListener("input", tick);
  tick(); setInterval(tick, 1000);
});

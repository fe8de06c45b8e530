// The mesh page: draws /api/mesh, redraws on every event of /events (SSE)
// and every REFRESH_MS (other members' views change without an event here).
"use strict";

const REFRESH_MS = 3000;
const MAX_EVENT_ROWS = 50;
const SVG = "http://www.w3.org/2000/svg";
const $ = (id) => document.getElementById(id);

function el(name, attrs, text) {
  const e = document.createElementNS(SVG, name);
  for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, String(v));
  if (text !== undefined) e.textContent = text;
  return e;
}

function cell(tr, text, cls) {
  const td = document.createElement("td");
  td.textContent = text === null || text === undefined ? "" : String(text);
  if (cls) td.className = cls;
  tr.appendChild(td);
  return td;
}

function fill(tableId, rows, render) {
  const body = $(tableId).tBodies[0];
  body.replaceChildren();
  if (rows.length === 0) {
    const tr = document.createElement("tr");
    tr.className = "empty";
    const td = cell(tr, "none");
    td.colSpan = $(tableId).tHead.rows[0].cells.length;
    body.appendChild(tr);
    return;
  }
  for (const r of rows) {
    const tr = document.createElement("tr");
    render(tr, r);
    body.appendChild(tr);
  }
}

// One state for the pair a-b from both ends' views.
function pairState(view, a, b) {
  const ab = view.views[a] && view.views[a].links ? view.views[a].links[b] : undefined;
  const ba = view.views[b] && view.views[b].links ? view.views[b].links[a] : undefined;
  if (ab && ba) return ab.state === ba.state ? ab.state : "asymmetric";
  if (ab) return ab.state;
  if (ba) return ba.state;
  return "unknown";
}

function rtt(view, a, b) {
  const xs = [[a, b], [b, a]]
    .map(([x, y]) => view.views[x] && view.views[x].links && view.views[x].links[y])
    .filter((l) => l && l.state === "up" && typeof l.rtt_ms === "number")
    .map((l) => l.rtt_ms);
  return xs.length ? Math.min(...xs) : null;
}

function drawGraph(view) {
  const svg = $("graph");
  svg.replaceChildren();
  const members = view.members;
  const n = members.length;
  const radius = n > 1 ? 170 : 0;
  const pos = {};
  members.forEach((m, i) => {
    const angle = -Math.PI / 2 + (2 * Math.PI * i) / n;
    pos[m] = [radius * Math.cos(angle), radius * Math.sin(angle)];
  });
  const links = el("g", { id: "links-layer" });
  const labels = el("g");
  for (let i = 0; i < n; i++) {
    for (let j = i + 1; j < n; j++) {
      const [a, b] = [members[i], members[j]];
      const state = pairState(view, a, b);
      const [x1, y1] = pos[a];
      const [x2, y2] = pos[b];
      const line = el("line", { class: "link", x1, y1, x2, y2, "data-a": a, "data-b": b, "data-state": state });
      line.appendChild(el("title", {}, `${a} ↔ ${b}: ${state}`));
      links.appendChild(line);
      const ms = rtt(view, a, b);
      const label = ms === null ? state : `${ms.toFixed(2)} ms`;
      labels.appendChild(el("text", { class: "rtt", x: (x1 + x2) / 2 + 4, y: (y1 + y2) / 2 - 4 }, label));
    }
  }
  // Partners hang off the edge members, outside the circle.
  const partners = (view.federation && view.federation.partners) || [];
  const edges = members.filter((m) => view.roles[m] === "edge");
  const partnerLayer = el("g");
  partners.forEach((p, k) => {
    const edge = edges[k % Math.max(edges.length, 1)];
    if (!edge) return;
    const [ex, ey] = pos[edge];
    const len = Math.hypot(ex, ey) || 1;
    const spread = (k - (partners.length - 1) / 2) * 60;
    const px = (ex / len) * (len + 90) + spread;
    const py = (ey / len) * (len + 90);
    const line = el("line", { class: "partner-link", x1: ex, y1: ey, x2: px, y2: py, "data-state": p.state, "data-partner": p.domain });
    links.appendChild(line);
    const g = el("g", { class: "partner", "data-domain": p.domain, "data-state": p.state });
    g.appendChild(el("rect", { x: px - 70, y: py - 14, width: 140, height: 28, rx: 4 }));
    g.appendChild(el("text", { x: px, y: py + 5, "text-anchor": "middle" }, p.domain));
    partnerLayer.appendChild(g);
  });
  const nodes = el("g");
  for (const m of members) {
    const [x, y] = pos[m];
    const reachable = !!(view.views[m] && view.views[m].reachable);
    const g = el("g", {
      class: "member", "data-fqdn": m, "data-role": view.roles[m] || "", "data-reachable": reachable,
      "data-self": m === view.from,
    });
    g.appendChild(el("circle", { cx: x, cy: y, r: 34 }));
    g.appendChild(el("text", { x, y: y + 52, "text-anchor": "middle" }, m));
    g.appendChild(el("text", { class: "rtt", x, y: y + 4, "text-anchor": "middle" }, view.roles[m] || ""));
    nodes.appendChild(g);
  }
  svg.append(links, labels, partnerLayer, nodes);
}

function draw(view) {
  $("from").textContent = `— view from ${view.from}`;
  $("version").textContent = view.topology_version;
  const pairs = view.members.length * (view.members.length - 1) / 2;
  let up = 0;
  for (let i = 0; i < view.members.length; i++)
    for (let j = i + 1; j < view.members.length; j++)
      if (pairState(view, view.members[i], view.members[j]) === "up") up++;
  $("summary").textContent = `${view.members.length} members, ${up}/${pairs} links up`;
  $("updated").textContent = new Date().toLocaleTimeString();
  drawGraph(view);
  const rows = [];
  for (const a of view.members) {
    const v = view.views[a];
    if (!v || !v.links) continue;
    for (const [peer, l] of Object.entries(v.links)) rows.push({ a, peer, ...l });
  }
  fill("links", rows, (tr, r) => {
    tr.className = `state-${r.state}`;
    cell(tr, r.a); cell(tr, r.peer); cell(tr, r.state, "state");
    cell(tr, r.state === "up" && typeof r.rtt_ms === "number" ? r.rtt_ms.toFixed(2) : ""); cell(tr, r.since);
  });
  const un = $("unreachable");
  un.hidden = view.unreachable.length === 0;
  un.textContent = view.unreachable.length
    ? `unreachable: ${view.unreachable.map((m) => `${m} (${view.views[m].error})`).join(", ")}` : "";
  const partners = (view.federation && view.federation.partners) || [];
  fill("partners", partners, (tr, p) => {
    tr.className = `state-${p.state}`;
    cell(tr, p.domain); cell(tr, p.mode); cell(tr, p.edge); cell(tr, p.state, "state");
    cell(tr, p.requests_in); cell(tr, p.requests_out);
    cell(tr, Object.entries(p.refusals || {}).map(([k, v]) => `${k} ${v}`).join(", "));
  });
  fill("rejections", (view.rejections || []).slice().reverse(), (tr, r) => {
    cell(tr, r.at); cell(tr, r.remote_addr); cell(tr, r.direction); cell(tr, r.reason);
    cell(tr, r.presented_name); cell(tr, r.detail);
  });
}

let inflight = false;
let again = false;
async function refresh() {
  if (inflight) { again = true; return; }
  inflight = true;
  try {
    const r = await fetch("/api/mesh", { cache: "no-store" });
    if (r.ok) draw(await r.json());
  } catch (e) {
    $("summary").textContent = `node not answering (${e})`;
  } finally {
    inflight = false;
    if (again) { again = false; refresh(); }
  }
}

function summarise(e) {
  switch (e.kind) {
    case "link": return `${e.peer}: ${e.from} → ${e.state}${e.last_error ? ` (${e.last_error})` : ""}`;
    case "rejection": return `${e.remote_addr} ${e.direction}: ${e.reason}${e.presented_name ? ` (${e.presented_name})` : ""}`;
    default: {
      const rest = { ...e };
      delete rest.at; delete rest.kind;
      return JSON.stringify(rest);
    }
  }
}

function onEvent(msg) {
  let e;
  try { e = JSON.parse(msg.data); } catch (_) { return; }
  const body = $("events").tBodies[0];
  const tr = document.createElement("tr");
  tr.className = `event-${e.kind}`;
  tr.dataset.kind = e.kind;
  cell(tr, e.at); cell(tr, e.kind); cell(tr, summarise(e));
  body.prepend(tr);
  while (body.rows.length > MAX_EVENT_ROWS) body.deleteRow(body.rows.length - 1);
  refresh();
}

function connect() {
  const sse = $("sse");
  const source = new EventSource("/events");
  source.onopen = () => { sse.dataset.state = "open"; sse.textContent = "live"; refresh(); };
  source.onerror = () => { sse.dataset.state = "connecting"; sse.textContent = "reconnecting"; };
  for (const kind of ["link", "rejection", "topology", "reload", "registration", "federation"])
    source.addEventListener(kind, onEvent);
  source.addEventListener("dropped", (m) => {
    sse.textContent = `live (${JSON.parse(m.data).dropped} dropped)`;
  });
}

refresh();
connect();
setInterval(refresh, REFRESH_MS);

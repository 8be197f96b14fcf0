// The snapflow web view: polls the REST API once a second and redraws in place (no reload).
// Everything shown comes from /jobs/{job}, /jobs/{job}/checkpoints and /jobs/{job}/exceptions;
// text goes in through textContent only.
"use strict";

const SVG = "http://www.w3.org/2000/svg";
const $ = (id) => document.getElementById(id);
let refreshes = 0;

function el(tag, attrs, text) {
  const e = tag.startsWith("svg:") ? document.createElementNS(SVG, tag.slice(4)) : document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, v);
  if (text !== undefined) e.textContent = text;
  return e;
}

function fmt(n, digits) {
  if (n === null || n === undefined) return "";
  if (typeof n !== "number") return String(n);
  return n.toLocaleString("en-US", { maximumFractionDigits: digits === undefined ? 0 : digits });
}

function pct(r) { return fmt(100 * r, 0) + " %"; }

async function get(path) {
  const r = await fetch(path, { cache: "no-store" });
  if (!r.ok) throw new Error(path + ": HTTP " + r.status);
  return r.json();
}

async function pickJob() {
  const wanted = new URLSearchParams(location.search).get("job");
  const { jobs } = await get("jobs");
  if (wanted) return wanted;
  if (jobs.length === 0) throw new Error("no job to show");
  return jobs[0].id;
}

// Vertices placed in columns by their longest distance from a source.
function layout(vertices, edges) {
  const depth = {};
  for (const v of vertices) depth[v.name] = 0;
  for (const v of vertices) {
    for (const e of edges) if (e.to === v.name) depth[v.name] = Math.max(depth[v.name], depth[e.from] + 1);
  }
  const rows = {};
  const pos = {};
  for (const v of vertices) {
    const d = depth[v.name];
    rows[d] = (rows[d] || 0) + 1;
    pos[v.name] = { col: d, row: rows[d] - 1 };
  }
  return pos;
}

function colour(bp) {
  const hue = 120 * (1 - Math.min(1, Math.max(0, bp)));
  return "hsl(" + hue + ", 65%, 38%)";
}

function drawGraph(job) {
  const svg = $("graph");
  const pos = layout(job.vertices, job.edges);
  const W = 190, H = 58, GX = 70, GY = 24;
  const cols = Math.max(1, ...Object.values(pos).map((p) => p.col + 1));
  const rows = Math.max(1, ...Object.values(pos).map((p) => p.row + 1));
  svg.setAttribute("viewBox", "0 0 " + (cols * (W + GX)) + " " + Math.max(120, rows * (H + GY) + 20));
  svg.replaceChildren();
  const defs = el("svg:defs");
  const marker = el("svg:marker", { id: "arrow", viewBox: "0 0 10 10", refX: "10", refY: "5", markerWidth: "7", markerHeight: "7", orient: "auto" });
  marker.appendChild(el("svg:path", { d: "M0,0 L10,5 L0,10 z", fill: "#7a8494" }));
  defs.appendChild(marker);
  svg.appendChild(defs);
  const at = (name) => ({ x: 10 + pos[name].col * (W + GX), y: 10 + pos[name].row * (H + GY) });
  for (const e of job.edges) {
    if (!pos[e.from] || !pos[e.to]) continue;
    const a = at(e.from), b = at(e.to);
    const g = el("svg:g", { class: "edge", "data-from": e.from, "data-to": e.to, "data-partitioning": e.partitioning });
    g.appendChild(el("svg:line", { x1: a.x + W, y1: a.y + H / 2, x2: b.x, y2: b.y + H / 2 }));
    g.appendChild(el("svg:text", { x: (a.x + W + b.x) / 2 - 20, y: (a.y + b.y + H) / 2 - 4 }, e.partitioning));
    svg.appendChild(g);
  }
  for (const v of job.vertices) {
    const p = at(v.name);
    const g = el("svg:g", { class: "vertex", "data-vertex": v.name, "data-backpressure": v.backpressure_ratio.toFixed(3) });
    g.appendChild(el("svg:rect", { x: p.x, y: p.y, width: W, height: H, fill: colour(v.backpressure_ratio) }));
    g.appendChild(el("svg:text", { x: p.x + 8, y: p.y + 17, class: "vertex-name" }, v.name + " ×" + v.parallelism + " (" + v.kind + ")"));
    g.appendChild(el("svg:text", { x: p.x + 8, y: p.y + 33 }, "in " + fmt(v.records_in_per_second) + "/s  out " + fmt(v.records_out_per_second) + "/s"));
    g.appendChild(el("svg:text", { x: p.x + 8, y: p.y + 49 }, "backpressure " + pct(v.backpressure_ratio)));
    svg.appendChild(g);
  }
}

function drawChart(cps) {
  const svg = $("checkpoint-chart");
  const history = cps.history.slice().reverse();
  const points = history.map((c) => ({ t: c.trigger_timestamp, d: c.duration_ms, s: c.state_size_bytes }));
  const aborted = cps.aborted.map((a) => ({ t: a.timestamp }));
  const W = 800, H = 200, P = 30;
  svg.setAttribute("viewBox", "0 0 " + W + " " + H);
  svg.replaceChildren();
  const times = points.map((p) => p.t).concat(aborted.map((a) => a.t));
  if (times.length === 0) return;
  const t0 = Math.min(...times), t1 = Math.max(...times, t0 + 1);
  const maxD = Math.max(1, ...points.map((p) => p.d));
  const maxS = Math.max(1, ...points.map((p) => p.s));
  const x = (t) => P + (W - 2 * P) * (t - t0) / (t1 - t0);
  const line = (f, max, cls, stroke) => {
    const d = points.map((p, i) => (i ? "L" : "M") + x(p.t).toFixed(1) + "," + (H - P - (H - 2 * P) * f(p) / max).toFixed(1)).join(" ");
    svg.appendChild(el("svg:path", { d: d, class: cls, fill: "none", stroke: stroke, "stroke-width": "1.8" }));
  };
  line((p) => p.d, maxD, "duration", "#1565c0");
  line((p) => p.s, maxS, "size", "#ef6c00");
  for (const a of aborted) {
    svg.appendChild(el("svg:line", { x1: x(a.t), x2: x(a.t), y1: P, y2: H - P, stroke: "#b3261e", class: "aborted-mark" }));
  }
  svg.appendChild(el("svg:text", { x: P, y: 14, "font-size": "11" }, "max duration " + fmt(maxD, 1) + " ms, max size " + fmt(maxS) + " B"));
}

function fillCheckpoints(cps) {
  $("checkpoint-counts").textContent = "(" + cps.counts.completed + " completed, " + cps.counts.aborted + " aborted)";
  const rows = cps.history.map((c) => ({ id: c.id, t: c.trigger_timestamp, d: c.duration_ms, s: c.state_size_bytes, a: c.max_alignment_ms, status: "completed" }))
    .concat(cps.aborted.map((a) => ({ id: a.id, t: a.timestamp, status: "aborted: " + a.reason })))
    .sort((p, q) => q.id - p.id).slice(0, 30);
  const body = $("checkpoints").tBodies[0];
  body.replaceChildren(...rows.map((r) => {
    const tr = el("tr", { class: "checkpoint" + (r.status === "completed" ? "" : " aborted"), "data-id": r.id });
    for (const v of [r.id, new Date(r.t).toLocaleTimeString(), fmt(r.d, 2), fmt(r.s), fmt(r.a, 3), r.status]) tr.appendChild(el("td", {}, v));
    return tr;
  }));
}

function fillTimeline(ex) {
  const f = ex.failures;
  $("failure-counts").textContent = "(" + f.total + " failures: " + f.restart + " restart, " + f.retryable + " retryable, " + f.fatal + " fatal)";
  const list = $("timeline");
  list.replaceChildren(...ex.timeline.slice().reverse().map((e) => el("li", { class: "event kind-" + e.kind, "data-kind": e.kind }, new Date(e.timestamp).toLocaleTimeString() + "  " + e.text)));
}

function fillTasks(job) {
  const body = $("tasks").tBodies[0];
  const rows = [];
  for (const v of job.vertices) {
    for (const t of v.tasks) {
      const tr = el("tr", { class: "task", "data-task": t.task });
      const cells = [t.task, fmt(t.records_in), fmt(t.records_in_per_second), fmt(t.records_out), fmt(t.records_out_per_second),
        pct(t.busy_ratio), pct(t.backpressure_ratio), pct(t.idle_ratio), t.input_queued + " / " + t.input_capacity,
        fmt(t.watermark_lag_ms), fmt(t.state_entries), fmt(t.state_bytes)];
      cells.forEach((c, i) => tr.appendChild(el("td", i === 1 ? { class: "records-in" } : {}, c)));
      rows.push(tr);
    }
  }
  body.replaceChildren(...rows);
}

function fillSummary(job) {
  $("job-name").textContent = job.name;
  const state = $("job-state");
  state.textContent = job.state;
  state.className = "state " + job.state;
  const total = job.vertices.reduce((n, v) => n + (v.kind === "source" ? v.records_out : 0), 0);
  const items = ["uptime " + fmt(job.uptime_ms / 1000, 0) + " s", "records read " + fmt(total), "restarts " + (job.restarts.region + job.restarts.job),
    "rss " + (job.rss_bytes ? fmt(job.rss_bytes / 1048576, 1) + " MiB" : "?")];
  $("summary").replaceChildren(...items.map((t, i) => el("span", { id: "summary-" + i }, t)));
  $("summary-1").setAttribute("data-records", String(total));
}

async function refresh(job) {
  try {
    const [overview, cps, ex] = await Promise.all([get("jobs/" + job), get("jobs/" + job + "/checkpoints"), get("jobs/" + job + "/exceptions")]);
    fillSummary(overview);
    drawGraph(overview);
    drawChart(cps);
    fillCheckpoints(cps);
    fillTimeline(ex);
    fillTasks(overview);
    refreshes += 1;
    $("refreshes").textContent = String(refreshes);
    $("updated-at").textContent = new Date().toLocaleTimeString();
    $("error").hidden = true;
  } catch (e) {
    $("error").hidden = false;
    $("error").textContent = String(e);
  }
}

(async function main() {
  let job;
  while (!job) {
    try {
      job = await pickJob();
    } catch (e) {
      $("error").hidden = false;
      $("error").textContent = String(e);
      await new Promise((r) => setTimeout(r, 1000));
    }
  }
  await refresh(job);
  setInterval(() => refresh(job), 1000);
})();

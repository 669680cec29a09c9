// taskbroker web UI: small hand-written helpers, embedded in the binary. Every page works
// without this file (plain HTML forms); it adds confirmations, auto-submitting selects and
// live charts drawn from the JSON admin API.
"use strict";

const POLL_MS = 2000;
const POINTS_MAX = 90;

function fmtRate(v) {
  if (!isFinite(v)) return "–";
  if (v >= 1000) return (v / 1000).toFixed(1) + "k/s";
  return v.toFixed(v < 10 ? 1 : 0) + "/s";
}

function fmtNum(v) {
  return Number(v).toLocaleString("en-US");
}

// A line chart on a canvas: series = [{name, color, points: [numbers]}].
function drawChart(canvas, series) {
  const dpr = window.devicePixelRatio || 1;
  const w = canvas.clientWidth, h = canvas.clientHeight;
  if (canvas.width !== w * dpr || canvas.height !== h * dpr) {
    canvas.width = w * dpr;
    canvas.height = h * dpr;
  }
  const ctx = canvas.getContext("2d");
  ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
  ctx.clearRect(0, 0, w, h);
  const left = 52, right = 10, top = 10, bottom = 22;
  let max = 1;
  for (const s of series) for (const p of s.points) if (p > max) max = p;
  max = niceMax(max);
  ctx.font = "11px system-ui, sans-serif";
  ctx.fillStyle = "#667085";
  ctx.strokeStyle = "#e3e6eb";
  ctx.lineWidth = 1;
  for (let i = 0; i <= 4; i++) {
    const y = top + (h - top - bottom) * (i / 4);
    ctx.beginPath();
    ctx.moveTo(left, Math.round(y) + 0.5);
    ctx.lineTo(w - right, Math.round(y) + 0.5);
    ctx.stroke();
    const v = max * (1 - i / 4);
    ctx.fillText(v >= 1000 ? (v / 1000).toFixed(1) + "k" : String(+v.toFixed(2)), 4, y + 4);
  }
  ctx.fillText("last " + Math.round((POINTS_MAX * POLL_MS) / 1000) + " s", left, h - 6);
  const span = POINTS_MAX - 1;
  for (const s of series) {
    if (s.points.length < 2) continue;
    ctx.strokeStyle = s.color;
    ctx.lineWidth = 2;
    ctx.beginPath();
    const offset = POINTS_MAX - s.points.length;
    s.points.forEach((p, i) => {
      const x = left + ((w - left - right) * (offset + i)) / span;
      const y = top + (h - top - bottom) * (1 - p / max);
      if (i === 0) ctx.moveTo(x, y); else ctx.lineTo(x, y);
    });
    ctx.stroke();
  }
}

function niceMax(v) {
  const p = Math.pow(10, Math.floor(Math.log10(v)));
  for (const m of [1, 2, 5, 10]) if (v <= m * p) return m * p;
  return 10 * p;
}

function push(arr, v) {
  arr.push(v);
  if (arr.length > POINTS_MAX) arr.shift();
}

// Rates from successive counter samples (a counter that went down, e.g. after a node
// restart, counts as 0 for that interval).
function rater() {
  let last = null;
  return (value, t) => {
    const prev = last;
    last = { value, t };
    if (!prev || t <= prev.t) return NaN;
    return Math.max(0, value - prev.value) / ((t - prev.t) / 1000);
  };
}

async function getJson(url) {
  const r = await fetch(url, { headers: { accept: "application/json" } });
  if (!r.ok) throw new Error(url + ": HTTP " + r.status);
  return r.json();
}

function setText(sel, text) {
  document.querySelectorAll(sel).forEach((e) => { e.textContent = text; });
}

function poll(fn) {
  let busy = false;
  const tick = async () => {
    if (busy) return;
    busy = true;
    try {
      await fn();
      setText("[data-live-status]", "live");
    } catch (e) {
      setText("[data-live-status]", "paused: " + e.message);
    } finally {
      busy = false;
    }
  };
  tick();
  setInterval(tick, POLL_MS);
}

function liveOverview(root) {
  const canvas = root.querySelector("canvas");
  const produced = [], acked = [];
  const rp = rater(), ra = rater();
  poll(async () => {
    const nodes = await getJson("/api/v1/nodes");
    let p = 0, a = 0, up = 0;
    for (const n of nodes) {
      if (!n.status) continue;
      up++;
      p += n.status.tasks_total.produced || 0;
      a += n.status.tasks_total.acked || 0;
    }
    const t = Date.now();
    const pr = rp(p, t), ar = ra(a, t);
    setText("[data-live=nodes-up]", up + " / " + nodes.length);
    if (!isNaN(pr)) {
      push(produced, pr);
      push(acked, ar);
      setText("[data-live=produce-rate]", fmtRate(pr));
      setText("[data-live=ack-rate]", fmtRate(ar));
    }
    drawChart(canvas, [
      { name: "produced/s", color: "#2f6fde", points: produced },
      { name: "acked/s", color: "#1a7f46", points: acked },
    ]);
  });
}

function liveTopics() {
  const raters = {};
  poll(async () => {
    const nodes = await getJson("/api/v1/nodes");
    const hw = {};
    for (const n of nodes) {
      if (!n.status) continue;
      for (const p of n.status.partitions) {
        if (!p.is_leader) continue;
        hw[p.topic] = (hw[p.topic] || 0) + p.high_watermark;
      }
    }
    const t = Date.now();
    document.querySelectorAll("[data-topic-rate]").forEach((e) => {
      const name = e.getAttribute("data-topic-rate");
      if (!(name in hw)) return;
      raters[name] = raters[name] || rater();
      const r = raters[name](hw[name], t);
      if (!isNaN(r)) e.textContent = fmtRate(r);
    });
  });
}

function liveGroup(root) {
  const topic = root.getAttribute("data-topic");
  const group = root.getAttribute("data-group");
  const url = "/api/v1/topics/" + encodeURIComponent(topic) + "/groups/" + encodeURIComponent(group);
  const rates = root.querySelector("canvas.rates");
  const depth = root.querySelector("canvas.depth");
  const produced = [], acked = [], ready = [], inflight = [], dead = [];
  const rp = rater(), ra = rater();
  poll(async () => {
    const d = await getJson(url);
    let hw = 0, ack = 0, rd = 0, fl = 0, dl = 0, lag = 0;
    for (const p of d.partitions) {
      hw += p.high_watermark; ack += p.acked_total; rd += p.ready;
      fl += p.in_flight; dl += p.dead_letters; lag += p.lag;
      for (const f of ["ready", "delayed", "in_flight", "dead_letters", "lag", "acked_total", "high_watermark"]) {
        setText('[data-p="' + p.partition + '"][data-f="' + f + '"]', fmtNum(p[f]));
      }
    }
    setText("[data-live=lag]", fmtNum(lag));
    setText("[data-live=dead]", fmtNum(dl));
    const t = Date.now();
    const pr = rp(hw, t), ar = ra(ack, t);
    if (!isNaN(pr)) {
      push(produced, pr); push(acked, ar);
      setText("[data-live=produce-rate]", fmtRate(pr));
      setText("[data-live=ack-rate]", fmtRate(ar));
    }
    push(ready, rd); push(inflight, fl); push(dead, dl);
    drawChart(rates, [
      { name: "produced/s", color: "#2f6fde", points: produced },
      { name: "acked/s", color: "#1a7f46", points: acked },
    ]);
    drawChart(depth, [
      { name: "ready", color: "#2f6fde", points: ready },
      { name: "in flight", color: "#b7791f", points: inflight },
      { name: "dead letters", color: "#c0392b", points: dead },
    ]);
  });
}

document.addEventListener("DOMContentLoaded", () => {
  document.querySelectorAll("form[data-confirm]").forEach((f) => {
    f.addEventListener("submit", (e) => {
      if (!window.confirm(f.getAttribute("data-confirm"))) e.preventDefault();
    });
  });
  // Timestamps are rendered as ms since the epoch; show them in local time.
  document.querySelectorAll("[data-ms]").forEach((e) => {
    const ms = Number(e.getAttribute("data-ms"));
    if (ms > 0) {
      e.title = ms + " ms";
      e.textContent = new Date(ms).toLocaleString();
    }
  });
  document.querySelectorAll("select[data-autosubmit]").forEach((s) => {
    s.addEventListener("change", () => s.form.submit());
  });
  const live = document.querySelector("[data-live-kind]");
  if (!live) return;
  const kind = live.getAttribute("data-live-kind");
  if (kind === "overview") liveOverview(live);
  else if (kind === "topics") liveTopics(live);
  else if (kind === "group") liveGroup(live);
});

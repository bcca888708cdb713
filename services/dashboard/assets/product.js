// A product's story, drawn as inline SVG from the dashboard's JSON.
"use strict";

const $ = (id) => document.getElementById(id);
const NS = "http://www.w3.org/2000/svg";
const [, , warehouse, sku] = location.pathname.split("/").map(decodeURIComponent);

function svg(tag, attrs) {
  const el = document.createElementNS(NS, tag);
  for (const [k, v] of Object.entries(attrs)) el.setAttribute(k, v);
  return el;
}

function scale(values, lo, hi, size) {
  const span = hi - lo || 1;
  return (v) => ((v - lo) / span) * size;
}

function drawStock(points) {
  const chart = $("chart");
  chart.replaceChildren();
  if (!points.length) return;
  const xs = points.map((p) => p[0]);
  const ys = points.map((p) => p[1]);
  const x = scale(xs, Math.min(...xs), Math.max(...xs), 800);
  const top = Math.max(...ys, 1);
  const y = (v) => 230 - (Math.max(v, 0) / top) * 220;
  // A step after each event: stock holds until the next one.
  const coords = points.map((p) => x(p[0]).toFixed(1) + "," + y(p[1]).toFixed(1));
  chart.appendChild(svg("polyline", { points: coords.join(" "), class: "stock" }));
  chart.appendChild(svg("text", { x: 4, y: 14, class: "axis" })).textContent = top + " units";
}

function drawSales(hours) {
  const chart = $("sales");
  chart.replaceChildren();
  if (!hours.length) return;
  const now = Date.now();
  const from = now - 7 * 24 * 3600 * 1000;
  const top = Math.max(...hours.map((h) => h[1]), 1);
  const width = 800 / (7 * 24);
  for (const [at, units] of hours) {
    if (at < from) continue;
    const h = (units / top) * 110;
    chart.appendChild(svg("rect", { x: ((at - from) / (now - from)) * 800, y: 120 - h, width: width, height: h, class: "sale" }));
  }
  chart.appendChild(svg("text", { x: 4, y: 14, class: "axis" })).textContent = top + " a hour";
}

async function load() {
  $("title").textContent = warehouse + " / " + sku;
  const answer = await fetch("/api/product/" + encodeURIComponent(warehouse) + "/" + encodeURIComponent(sku));
  if (!answer.ok) {
    $("summary").textContent = await answer.text();
    return;
  }
  const story = await answer.json();
  const r = story.row;
  $("summary").textContent = r
    ? "on hand " + r.on_hand + (r.days_of_cover != null ? ", " + r.days_of_cover + " days of cover" : "") + (r.band ? ", " + r.band : "")
    : "not in the stock view";
  $("points").textContent = story.points.length < story.events
    ? "(" + story.events + " events, drawn as " + story.points.length + " points)"
    : "(" + story.events + " events)";
  drawStock(story.points);
  drawSales(story.sales_per_hour);
  $("locations").replaceChildren(...Object.entries(story.locations).map(([l, q]) => {
    const li = document.createElement("li");
    li.textContent = l + ": " + q;
    return li;
  }));
  $("thresholds").textContent = r ? "low stock below " + r.threshold + "; stockout within " + r.stockout_days + " days" : "";
  $("recent").replaceChildren(...story.recent.map((e) => {
    const tr = document.createElement("tr");
    const p = e.payload || {};
    const what = p.from ? p.from + " -> " + p.to + " " + p.quantity : (p.location || "") + " " + (p.quantity ?? "") + (p.reason ? " (" + p.reason + ")" : "");
    for (const text of [e.seq, new Date(e.at_ms).toLocaleString(), e.type, what, e.msg_id]) {
      const td = document.createElement("td");
      td.textContent = text;
      tr.appendChild(td);
    }
    return tr;
  }));
}

load();

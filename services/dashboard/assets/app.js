// The stock page: one event stream for the whole page (a browser allows about six
// connections per host), its query kept by the server, rows replaced in place.
"use strict";

const state = { rows: new Map(), order: [], source: null, retry: null, warehouses: new Set() };
const $ = (id) => document.getElementById(id);

function localTime(ms) {
  return ms ? new Date(ms).toLocaleString() : "";
}

function query() {
  const params = new URLSearchParams();
  const w = $("warehouse").value;
  const q = $("search").value.trim();
  if (w) params.set("warehouse", w);
  if (q) params.set("q", q);
  return params.toString();
}

function cell(tr, cls, text) {
  const td = document.createElement("td");
  td.className = cls;
  td.textContent = text;
  tr.appendChild(td);
}

function renderRow(r) {
  const tr = document.createElement("tr");
  tr.dataset.key = r.key;
  tr.classList.toggle("low", r.low);
  tr.classList.toggle("stockout", r.stockout);
  tr.classList.toggle("empty", r.on_hand <= 0);
  const w = document.createElement("td");
  w.className = "warehouse";
  w.textContent = r.warehouse;
  tr.appendChild(w);
  const s = document.createElement("td");
  s.className = "sku";
  const a = document.createElement("a");
  a.href = "/product/" + encodeURIComponent(r.warehouse) + "/" + encodeURIComponent(r.sku);
  a.textContent = r.sku;
  s.appendChild(a);
  tr.appendChild(s);
  cell(tr, "on-hand num", r.on_hand);
  cell(tr, "threshold num", r.threshold);
  cell(tr, "days-of-cover num", r.days_of_cover == null ? "" : r.days_of_cover.toFixed(2));
  cell(tr, "band", r.band || "");
  cell(tr, "sold-last-day num", r.sold_last_day == null ? "" : r.sold_last_day);
  cell(tr, "last-event", localTime(r.last_event_ms));
  return tr;
}

function renderTable() {
  const body = $("rows");
  const next = document.createDocumentFragment();
  for (const key of state.order) {
    const r = state.rows.get(key);
    if (r) next.appendChild(renderRow(r));
  }
  body.replaceChildren(next);
}

function renderTotal(total) {
  $("shown").textContent = state.order.length + " of " + total + " shown";
}

function addWarehouses(seen) {
  let added = false;
  for (const name of seen) {
    if (!state.warehouses.has(name)) {
      state.warehouses.add(name);
      added = true;
    }
  }
  if (!added) return;
  const select = $("warehouse");
  const chosen = select.value;
  const names = [...state.warehouses].sort();
  select.replaceChildren(new Option("all", ""), ...names.map((n) => new Option(n, n)));
  select.value = chosen;
}

function alertItem(a) {
  const li = document.createElement("li");
  li.dataset.type = a.type;
  li.dataset.key = a.key;
  const time = document.createElement("time");
  time.textContent = localTime(a.at_ms);
  const what = document.createElement("span");
  what.className = "what";
  what.textContent = a.type + " " + a.warehouse + "/" + a.sku;
  const detail = document.createElement("span");
  detail.className = "detail";
  const p = a.payload || {};
  detail.textContent = p.on_hand != null && p.threshold != null
    ? "on hand " + p.on_hand + ", threshold " + p.threshold
    : p.band ? "band " + p.band + (p.previous_band ? " (was " + p.previous_band + ")" : "")
    : p.days_of_cover != null ? p.days_of_cover + " days of cover" : "";
  li.append(time, what, detail);
  return li;
}

function prependAlerts(alerts) {
  const list = $("alerts");
  for (const a of alerts) list.insertBefore(alertItem(a), list.firstChild);
  while (list.children.length > 200) list.removeChild(list.lastChild);
}

function renderStatus(s) {
  if (!s) return;
  const lag = [s.stock_lag, s.velocity_lag].map((l) => (l == null ? "?" : l));
  $("lag").textContent = "behind the log: stock " + lag[0] + ", velocity " + lag[1] + " events";
  $("dead-letters").textContent = (s.dead_letters == null ? "?" : s.dead_letters) + " dead letters";
  $("last-event").textContent = s.last_event_ms ? "last event " + localTime(s.last_event_ms) : "";
  setLive(s.nats);
}

function setLive(live) {
  const el = $("status");
  el.textContent = live ? "live" : "reconnecting";
  el.className = live ? "live" : "reconnecting";
}

function connect() {
  if (state.source) state.source.close();
  clearTimeout(state.retry);
  const qs = query();
  // The address says what the page shows, so it can be bookmarked or shared.
  history.replaceState(null, "", location.pathname + (qs ? "?" + qs : ""));
  $("csv").href = "/rows.csv" + (qs ? "?" + qs : "");
  const source = new EventSource("/events" + (qs ? "?" + qs : ""));
  state.source = source;
  source.addEventListener("snapshot", (e) => {
    const snap = JSON.parse(e.data);
    state.rows = new Map(snap.rows.map((r) => [r.key, r]));
    state.order = snap.rows.map((r) => r.key);
    addWarehouses(snap.warehouses || []);
    addWarehouses(snap.rows.map((r) => r.warehouse));
    renderTable();
    renderTotal(snap.total);
    $("alerts").replaceChildren();
    prependAlerts([...snap.alerts].reverse());
    renderStatus(snap.status);
    setLive(snap.status ? snap.status.nats : true);
  });
  source.addEventListener("update", (e) => {
    const u = JSON.parse(e.data);
    for (const r of u.rows || []) state.rows.set(r.key, r);
    if (u.order) {
      state.order = u.order;
      const keep = new Set(u.order);
      for (const k of [...state.rows.keys()]) if (!keep.has(k)) state.rows.delete(k);
    }
    if (u.rows || u.order) {
      addWarehouses((u.rows || []).map((r) => r.warehouse));
      renderTable();
    }
    if (u.total != null) renderTotal(u.total);
    if (u.alerts) prependAlerts(u.alerts);
    if (u.status) renderStatus(u.status);
  });
  // A failed or refused stream is closed for good by the browser: make a new one.
  source.onerror = () => {
    setLive(false);
    source.close();
    state.retry = setTimeout(connect, 1000);
  };
}

// A page opened as /?warehouse=W&q=S starts filtered.
{
  const params = new URLSearchParams(location.search);
  const w = params.get("warehouse");
  if (w) addWarehouses([w]);
  $("warehouse").value = w || "";
  $("search").value = params.get("q") || "";
}
$("warehouse").addEventListener("change", connect);
let typing = null;
$("search").addEventListener("input", () => {
  clearTimeout(typing);
  typing = setTimeout(connect, 250);
});
connect();

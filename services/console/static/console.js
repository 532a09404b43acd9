// The review console's page script. Everything that comes from listings (ids, categories, reasons) is put in the page
// with textContent or as an attribute value, never parsed as HTML.
"use strict";

const csrfToken = document.querySelector('meta[name="csrf-token"]').content;
const state = { view: "feed", marketplace: "", marketplaces: [], queue: [], selected: 0, results: [], picked: 0,
                feed: null };

function el(tag, props = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(props)) {
    if (key === "text") node.textContent = value;
    else if (key === "className") node.className = value;
    else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else node.setAttribute(key, value);
  }
  for (const child of children) if (child !== null && child !== undefined) node.append(child);
  return node;
}

function status(message) { document.getElementById("status").textContent = message; }

async function api(path, options = {}) {
  const response = await fetch(path, { credentials: "same-origin", ...options,
    headers: { "x-csrf-token": csrfToken, "content-type": "application/json", ...(options.headers || {}) } });
  if (response.status === 401) { window.location = "/login"; throw new Error("signed out"); }
  const body = await response.json().catch(() => ({}));
  if (!response.ok) throw new Error(body.error || response.statusText);
  return body;
}

function query(params) {
  const search = new URLSearchParams();
  for (const [key, value] of Object.entries(params)) if (value !== "" && value !== undefined) search.set(key, value);
  return search.toString();
}

function percent(value) { return (100 * value).toFixed(1) + "%"; }

function thumbnail(digest) {
  if (!/^[0-9a-f]{64}$/.test(digest || "")) return null;
  return el("img", { src: "/thumbnails/" + digest, alt: "", loading: "lazy" });
}

function customs(category) {
  const codes = (category.customs || []).map(c => c.code).join(", ");
  return codes ? el("span", { className: "customs", text: " HS " + codes }) : null;
}

// -- the live feed

function feedCard(c) {
  return el("li", { className: "card", "data-listing": c.listing_id },
    thumbnail(c.image_digest),
    el("div", { className: "id", text: c.listing_id }),
    el("div", { text: c.marketplace }),
    el("div", { className: "category", text: c.category.name || c.error_reason }),
    el("div", { className: "status-" + c.status, text: c.status + (c.status === "FAILED" ? "" : " · " + percent(c.confidence)) +
                (c.superseded ? " · superseded: a newer submission of this listing was classified first" : "") }));
}

function addToFeed(c, atTop = true) {
  const list = document.getElementById("feed");
  const card = feedCard(c);
  if (atTop) list.prepend(card); else list.append(card);
  while (list.children.length > 200) list.lastChild.remove();
}

async function loadFeed() {
  const list = document.getElementById("feed");
  list.replaceChildren();
  try {
    const found = await api("/api/recent?" + query({ marketplace: state.marketplace }));
    for (const c of found.classifications) addToFeed(c, false);
  } catch (error) { status("Recent classifications could not be loaded: " + error.message); }
  if (state.feed) state.feed.close();
  const source = new EventSource("/api/feed?" + query({ marketplace: state.marketplace }));
  source.addEventListener("classification", event => addToFeed(JSON.parse(event.data)));
  source.addEventListener("open", () => { document.getElementById("feed-state").textContent = "Live."; });
  source.addEventListener("error", () => { document.getElementById("feed-state").textContent = "Reconnecting…"; });
  state.feed = source;
}

// -- the review queue

async function loadQueue() {
  try {
    const found = await api("/api/review?" + query({ marketplace: state.marketplace,
      category: document.getElementById("review-category").value,
      listing: document.getElementById("review-listing").value.trim() }));
    state.queue = found.classifications;
    state.selected = Math.min(state.selected, Math.max(0, state.queue.length - 1));
    document.getElementById("review-total").textContent = found.total + " waiting";
    renderQueue();
  } catch (error) { status("The review queue could not be loaded: " + error.message); }
}

function renderQueue() {
  const list = document.getElementById("queue");
  list.replaceChildren(...state.queue.map((c, index) => el("li",
    { className: index === state.selected ? "selected" : "", "data-listing": c.listing_id,
      onclick: () => { state.selected = index; renderQueue(); } },
    el("span", { className: "status-" + c.status, text: percent(c.confidence) + " " }),
    el("span", { className: "id", text: c.listing_id }))));
  const current = state.queue[state.selected];
  const detail = document.getElementById("detail");
  if (!current) { detail.replaceChildren(el("p", { text: "Nothing waits for review." })); return; }
  list.children[state.selected]?.scrollIntoView({ block: "nearest" });
  const search = el("input", { id: "category-search", type: "search", placeholder: "Any category (press /)",
                               autocomplete: "off" });
  search.addEventListener("input", () => searchCategories(search.value));
  search.addEventListener("keydown", searchKeys);
  detail.replaceChildren(
    thumbnail(current.image_digest),
    el("h2", { className: "id", text: current.listing_id }),
    el("p", { text: current.marketplace + " · " + current.status + " · threshold " + percent(current.review_threshold) }),
    el("ol", { className: "candidates" }, ...current.candidates.map((k, index) => el("li", {},
      el("button", { "data-candidate": String(index + 1), onclick: () => correct(k.category.id) },
        el("kbd", { text: String(index + 1) })),
      el("span", { text: " " + k.category.name + " · " + percent(k.confidence) + " " }),
      el("span", { className: "customs", text: (k.category.path || []).join(" › ") }),
      customs(k.category)))),
    search,
    el("ol", { id: "search-results", className: "results" }));
}

let searchTimer = null;
function searchCategories(text) {
  clearTimeout(searchTimer);
  searchTimer = setTimeout(async () => {
    const current = state.queue[state.selected];
    if (!current) return;
    try {
      const found = await api("/api/categories?" + query({ marketplace: current.marketplace, q: text }));
      state.results = found.categories;
      state.picked = 0;
      renderResults();
    } catch (error) { status("Search failed: " + error.message); }
  }, 150);
}

function renderResults() {
  const list = document.getElementById("search-results");
  if (!list) return;
  list.replaceChildren(...state.results.map((category, index) => el("li",
    { className: index === state.picked ? "selected" : "", "data-category": category.id,
      onclick: () => correct(category.id) },
    el("span", { text: category.name }), el("span", { className: "customs", text: "  " + category.path.join(" › ") }))));
}

function searchKeys(event) {
  if (event.key === "ArrowDown") { state.picked = Math.min(state.picked + 1, state.results.length - 1); renderResults(); }
  else if (event.key === "ArrowUp") { state.picked = Math.max(state.picked - 1, 0); renderResults(); }
  else if (event.key === "Enter" && state.results[state.picked]) correct(state.results[state.picked].id);
  else if (event.key === "Escape") { event.target.blur(); document.getElementById("queue").focus(); }
  else return;
  event.preventDefault();
}

function newCorrectionId() {
  const bytes = new Uint8Array(16);
  crypto.getRandomValues(bytes);
  return Array.from(bytes, b => b.toString(16).padStart(2, "0")).join("");
}

async function correct(categoryId) {
  const current = state.queue[state.selected];
  if (!current) return;
  // A retry of the same decision reuses its id (stored once); another category is another decision.
  if (!current.pending || current.pending.category !== categoryId) {
    current.pending = { category: categoryId, id: newCorrectionId() };
  }
  const correctionId = current.pending.id;
  try {
    const found = await api("/api/corrections", { method: "POST", body: JSON.stringify({
      correction_id: correctionId, listing_id: current.listing_id,
      classification_sequence: current.sequence, category_id: categoryId }) });
    status(found.correction.photo_replaced_by_sequence
      ? "Saved, not sent to the marketplace: " + current.listing_id + " shows another photo now (its new " +
        "classification is in the queue); the verdict applies again if the listing goes back to this photo"
      : "Saved: " + current.listing_id + " → " + found.correction.category.name);
    state.queue.splice(state.selected, 1);
    state.results = [];
    renderQueue();
    document.getElementById("queue").focus();
    if (state.queue.length < 5) loadQueue();
  } catch (error) { status("Not saved: " + error.message + " (press the key again to retry)"); }
}

function reviewKeys(event) {
  if (state.view !== "review" || event.target.tagName === "INPUT" || event.target.tagName === "SELECT") return;
  if (event.key === "j" || event.key === "ArrowDown") state.selected = Math.min(state.selected + 1, state.queue.length - 1);
  else if (event.key === "k" || event.key === "ArrowUp") state.selected = Math.max(state.selected - 1, 0);
  else if (/^[1-9]$/.test(event.key)) {
    const candidate = state.queue[state.selected]?.candidates[Number(event.key) - 1];
    if (candidate) correct(candidate.category.id);
    event.preventDefault();
    return;
  } else if (event.key === "/") { event.preventDefault(); document.getElementById("category-search")?.focus(); return; }
  else return;
  event.preventDefault();
  state.results = [];
  renderQueue();
}

// -- numbers

function svg(tag, attributes = {}, text) {
  const node = document.createElementNS("http://www.w3.org/2000/svg", tag);
  for (const [key, value] of Object.entries(attributes)) node.setAttribute(key, String(value));
  if (text !== undefined) node.textContent = text;
  return node;
}

function barChart(rows, width = 640) {
  // rows: [{label, value, note}] drawn as horizontal bars
  const barHeight = 20, labelWidth = 180, max = Math.max(1, ...rows.map(r => r.value));
  const chart = svg("svg", { width, height: rows.length * (barHeight + 6) + 4, role: "img" });
  rows.forEach((row, index) => {
    const y = index * (barHeight + 6);
    chart.append(svg("text", { x: 0, y: y + 15 }, row.label));
    chart.append(svg("rect", { x: labelWidth, y, height: barHeight, fill: "#4a78b5",
                               width: Math.max(1, (width - labelWidth - 170) * row.value / max) }));
    chart.append(svg("text", { x: width - 165, y: y + 15 }, row.note));
  });
  return chart;
}

async function loadNumbers() {
  try {
    const found = await api("/api/statistics?" + query({ marketplace: state.marketplace,
                                                         window: document.getElementById("window").value }));
    const totals = [["classified", found.classified], ["needing review", found.needs_review],
                    ["share needing review", percent(found.needs_review_share)], ["failed", found.failed],
                    ["checked by operators", found.checked],
                    ["model right where checked", found.checked_accuracy === null ? "–" : percent(found.checked_accuracy)]];
    document.getElementById("totals").replaceChildren(...totals.map(([name, value]) =>
      el("div", {}, el("dt", { text: name }), el("dd", { text: String(value) }))));
    document.getElementById("throughput-chart").replaceChildren(barChart(found.per_minute.slice(-30).map(b => ({
      label: new Date(b.start * 1000).toLocaleTimeString(), value: b.classifications, note: String(b.classifications) }))));
    document.getElementById("category-chart").replaceChildren(barChart(found.per_category.map(c => ({
      label: c.category, value: c.classified + c.needs_review,
      note: (c.classified + c.needs_review) + " · review " + c.needs_review +
            (c.checked ? " · right " + percent(c.checked_correct / c.checked) + " of " + c.checked : "") }))));
    const failures = document.getElementById("failure-chart");
    if (found.failed_by_kind.length) {
      failures.replaceChildren(barChart(found.failed_by_kind.map(f => ({ label: f.kind, value: f.count,
                                                                         note: String(f.count) }))),
        el("ul", {}, ...found.failed_by_kind.map(f => el("li", {}, f.kind + ": " + f.meaning + " ",
          el("button", { type: "button", "data-kind": f.kind,
                         onclick: () => loadFailures(f.kind), text: "latest" })))));
    } else {
      failures.replaceChildren(el("p", { text: "none in this window" }));
    }
    document.getElementById("failures").replaceChildren();
  } catch (error) { status("The numbers could not be loaded: " + error.message); }
}

async function loadFailures(kind, before = 0) {
  // the latest failures of one kind, with the reason each listing got (what to tell its seller or producer);
  // "older" reads the page before the last row shown
  try {
    const found = await api("/api/failures?" + query({ marketplace: state.marketplace, kind, before: before || "" }));
    const rows = found.classifications.map(c => el("tr", {},
      el("td", { text: c.classified_at }), el("td", { className: "id", text: c.listing_id }),
      el("td", { text: c.marketplace }), el("td", { text: c.error_kind }), el("td", { text: c.error_reason })));
    const table = document.getElementById("failures");
    if (before) table.querySelector("tr.older")?.remove(); else table.replaceChildren();
    table.append(...rows);
    if (found.next_before) {
      table.append(el("tr", { className: "older" }, el("td", { colspan: "5" }, el("button", {
        type: "button", text: "older", onclick: () => loadFailures(kind, found.next_before) }))));
    }
  } catch (error) { status("The failures could not be loaded: " + error.message); }
}

async function loadCorrections() {
  try {
    const found = await api("/api/corrections?" + query({ marketplace: state.marketplace }));
    document.getElementById("corrections").replaceChildren(...found.corrections.map(c => el("tr", {},
      el("td", { text: c.corrected_at }), el("td", { className: "id", text: c.listing_id }),
      el("td", { text: c.model_category.name + " (" + percent(c.model_confidence) + ")" }),
      el("td", { text: c.category.name + (c.model_was_right ? " ✓" : "") }),
      el("td", { text: c.operator + (c.carried_from_sequence ? " (their verdict on this photo, carried: the listing " +
                                     "went back to it)" : "") +
                       (c.photo_replaced_by_sequence ? " (not sent: the listing showed another photo by then)" : "") }))));
  } catch (error) { status("Corrections could not be loaded: " + error.message); }
}

// -- navigation

function show(view) {
  state.view = view;
  for (const name of ["feed", "review", "numbers", "corrections"]) {
    document.getElementById("view-" + name).hidden = name !== view;
    document.getElementById("tab-" + name).classList.toggle("active", name === view);
  }
  if (view === "review") { loadQueue(); document.getElementById("queue").focus(); }
  if (view === "numbers") loadNumbers();
  if (view === "corrections") loadCorrections();
}

function fillCategoryFilter() {
  const select = document.getElementById("review-category");
  const seen = new Map();
  for (const m of state.marketplaces) {
    if (state.marketplace && m.name !== state.marketplace) continue;
    for (const c of m.categories) seen.set(c.id, c.name);
  }
  select.replaceChildren(el("option", { value: "", text: "all" }),
    ...[...seen].sort((a, b) => a[1].localeCompare(b[1])).map(([id, name]) => el("option", { value: id, text: name })));
}

async function start() {
  for (const button of document.querySelectorAll("nav button")) button.addEventListener("click", () => show(button.dataset.view));
  document.addEventListener("keydown", reviewKeys);
  const marketplace = document.getElementById("marketplace");
  marketplace.addEventListener("change", () => {
    state.marketplace = marketplace.value;
    fillCategoryFilter();
    loadFeed();
    show(state.view);
  });
  document.getElementById("review-category").addEventListener("change", loadQueue);
  document.getElementById("review-listing").addEventListener("keydown", async event => {
    if (event.key !== "Enter") return;
    event.preventDefault();
    state.selected = 0;
    await loadQueue();
    document.getElementById("queue").focus();
  });
  document.getElementById("window").addEventListener("change", loadNumbers);
  try {
    state.marketplaces = (await api("/api/marketplaces")).marketplaces;
    marketplace.append(...state.marketplaces.map(m => el("option", { value: m.name, text: m.name })));
    fillCategoryFilter();
  } catch (error) { status("Marketplaces could not be loaded: " + error.message); }
  loadFeed();
}

start();

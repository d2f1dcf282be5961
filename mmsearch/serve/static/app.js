// mmsearch web page: plain JS over the JSON API (no build step). Untrusted text only ever goes in via textContent.
//
// The search in view lives in the address (?collection=&q=&modality=&k=, or &similar=ID instead of q): a URL can be
// shared or reloaded, and Back/Forward step through searches (history.pushState + popstate). An uploaded image is
// not in the address; Back to it works while the page stays open.
"use strict";

const $ = (id) => document.getElementById(id);
const THUMB_SIZE = 320;          // px, longest side; 2x screens get twice that (srcset)
const K_CHOICES = ["12", "24", "48", "96"];
const state = {
  apiKey: sessionStorage.getItem("mmsearch-api-key") || "",
  collections: [],
  current: null,                 // the search in view: {collection, modality, k, q | similar | upload}
  hits: [],                      // its results
  seq: 0,                        // only the newest request may render
  viewing: -1,                   // index in hits of the full-size view, -1 when closed
  opener: null,                  // the card that opened the view (focus returns to it)
  uploads: new Map(),            // upload token -> File, for Back/Forward within this page
};

// -- the API ---------------------------------------------------------------------------------------
function collectionBase(name) { return `/api/collections/${encodeURIComponent(name)}`; }

async function api(path, options = {}) {
  const headers = Object.assign({}, options.headers || {});
  if (state.apiKey) headers["X-API-Key"] = state.apiKey;
  let response;
  try {
    response = await fetch(path, Object.assign({}, options, { headers }));
  } catch (err) {
    throw new Error(`the server did not answer (${err.message}); is it still running?`);
  }
  const body = await response.json().catch(() => ({}));
  if (!response.ok) {
    if (response.status === 401) $("key-form").hidden = false;
    throw new Error((body.error && body.error.message) || `${response.status} ${response.statusText}`);
  }
  return body;
}

function imageUrl(collection, id, size) {
  const base = `${collectionBase(collection)}/items/${id}`;
  return size ? `${base}/thumbnail?size=${size}` : `${base}/image`;
}

// An <img src> cannot send the key header: with a key, fetch the bytes and show them from a blob URL.
async function keyedUrl(url) {
  const response = await fetch(url, { headers: { "X-API-Key": state.apiKey } });
  if (!response.ok) throw new Error(`${response.status}`);
  return URL.createObjectURL(await response.blob());
}

function showThumb(img, collection, id) {
  const small = imageUrl(collection, id, THUMB_SIZE);
  const large = imageUrl(collection, id, THUMB_SIZE * 2);
  if (!state.apiKey) {
    img.srcset = `${small} 1x, ${large} 2x`;
    img.src = small;
    return;
  }
  keyedUrl(window.devicePixelRatio > 1 ? large : small).then((u) => { img.src = u; }).catch(() => {});
}

// -- names -----------------------------------------------------------------------------------------
function baseName(uri) { return uri ? uri.split(/[\\/]/).filter(Boolean).pop() || uri : ""; }
function clip(text, n) { return text.length > n ? `${text.slice(0, n - 1)}…` : text; }
function imageIdOf(hit) {
  if (hit.modality === "image") return hit.id;
  const id = hit.metadata && hit.metadata.image_id;
  return id === null || id === undefined ? null : id;
}
function nameOf(hit) {
  if (hit.modality === "image") return baseName(hit.uri) || hit.caption || `item ${hit.id}`;
  return `“${clip(hit.text || "", 60)}”`;
}

// -- the address -----------------------------------------------------------------------------------
function fromUrl(search = location.search) {
  const p = new URLSearchParams(search);
  const desc = { collection: p.get("collection") || "", modality: p.get("modality") === "text" ? "text" : "image",
                 k: K_CHOICES.includes(p.get("k")) ? p.get("k") : "24" };
  if (p.get("q") !== null) desc.q = p.get("q");
  else if (/^\d+$/.test(p.get("similar") || "")) desc.similar = p.get("similar");
  return desc;
}

function toUrl(desc) {
  const p = new URLSearchParams();
  if (desc.collection) p.set("collection", desc.collection);
  if (desc.q !== undefined) p.set("q", desc.q);
  if (desc.similar !== undefined) p.set("similar", desc.similar);
  p.set("modality", desc.modality);
  p.set("k", desc.k);
  return `${location.pathname}?${p}`;
}

function historyState(desc) {
  const { collection, modality, k, q, similar, upload, name } = desc;
  return { mmsearch: { collection, modality, k, q, similar, upload, name } };
}

function remember(desc, push) {
  const url = toUrl(desc);
  if (push && url + JSON.stringify(historyState(desc)) !== location.pathname + location.search + JSON.stringify(history.state)) {
    history.pushState(historyState(desc), "", url);
  } else {
    history.replaceState(historyState(desc), "", url);
  }
}

// -- the controls ----------------------------------------------------------------------------------
function controls() {
  return { collection: $("collection").value, modality: document.querySelector("input[name=modality]:checked").value,
           k: $("k").value };
}

function setControls(desc) {
  if (desc.collection && state.collections.includes(desc.collection)) $("collection").value = desc.collection;
  document.querySelector(`input[name=modality][value=${desc.modality}]`).checked = true;
  $("k").value = desc.k;
  $("q").value = desc.q !== undefined ? desc.q : "";
}

// -- messages and status ---------------------------------------------------------------------------
function showMessage(text, { kind = "info", title = "" } = {}) {
  const box = $("message");
  box.className = `message ${kind}`;
  box.setAttribute("role", kind === "error" ? "alert" : "status");
  const parts = [];
  if (title) {
    const strong = document.createElement("strong");
    strong.textContent = title;
    parts.push(strong, document.createTextNode(" "));
  }
  parts.push(document.createTextNode(text));
  box.replaceChildren(...parts);
  box.hidden = false;
}

function clearMessage() { $("message").hidden = true; $("message").replaceChildren(); }

function setStatus(text, { image = null, busy = false } = {}) {
  const status = $("status");
  status.replaceChildren();
  status.classList.toggle("busy", busy);
  if (image) status.append(image);
  status.append(document.createTextNode(text));
}

function showError(err) {
  $("results").replaceChildren();
  $("results").classList.remove("loading");
  $("results").removeAttribute("aria-busy");
  state.hits = [];
  setStatus("");
  showMessage(err.message || String(err), { kind: "error", title: "Search failed:" });
}

// -- results ---------------------------------------------------------------------------------------
function card(hit, index, collection) {
  const el = document.createElement("article");
  el.className = `hit ${hit.modality}${hit.good_match === false ? " weak" : ""}`;
  el.tabIndex = 0;
  el.dataset.id = hit.id;
  el.dataset.index = index;
  el.setAttribute("aria-label", `${nameOf(hit)}, score ${hit.score.toFixed(3)}: open full size`);
  const imageId = imageIdOf(hit);
  if (imageId !== null) {
    const img = document.createElement("img");
    img.className = "thumb";
    img.loading = "lazy";
    img.decoding = "async";
    img.alt = hit.caption || hit.text || baseName(hit.uri) || `item ${hit.id}`;
    showThumb(img, collection, imageId);
    el.append(img);
  }
  const body = document.createElement("div");
  body.className = "body";
  if (hit.modality === "text" || hit.caption) {
    const caption = document.createElement("div");
    caption.className = "caption";
    caption.textContent = hit.modality === "text" ? hit.text : hit.caption;
    body.append(caption);
  }
  if (hit.labels && hit.labels.length) {
    const labels = document.createElement("div");
    labels.className = "labels";
    labels.title = "what the model sees (stored labels, with confidences)";
    labels.textContent = hit.labels.slice(0, 3).map((l) => `${l.name} ${l.confidence.toFixed(2)}`).join(" · ");
    body.append(labels);
  }
  const uri = document.createElement("div");
  uri.className = "uri";
  uri.textContent = baseName(hit.uri);
  uri.title = hit.uri || "";
  const actions = document.createElement("div");
  actions.className = "actions";
  const score = document.createElement("span");
  score.className = "score";
  score.textContent = hit.score.toFixed(3);
  score.title = "cosine similarity: 1.0 is identical";
  actions.append(score);
  if (hit.good_match === false) {
    const badge = document.createElement("span");
    badge.className = "badge weak-badge";
    badge.textContent = "weak";
    badge.title = "below this collection's no-match threshold: probably not what you asked for";
    actions.append(badge);
  }
  const similar = document.createElement("button");
  similar.type = "button";
  similar.className = "similar";
  similar.textContent = "Similar";
  similar.title = `Find items similar to ${nameOf(hit)}`;
  similar.addEventListener("click", (e) => { e.stopPropagation(); searchSimilar(hit); });
  actions.append(similar);
  body.append(uri, actions);
  el.append(body);
  el.addEventListener("click", () => openViewer(index, el));
  el.addEventListener("keydown", (e) => {
    if (e.target === el && (e.key === "Enter" || e.key === " ")) { e.preventDefault(); openViewer(index, el); }
  });
  return el;
}

function weakDivider(allWeak, desc) {
  const line = document.createElement("div");
  line.className = `weak-divider${allWeak ? " all-weak" : ""}`;
  line.setAttribute("role", "separator");
  line.textContent = allWeak
    ? `No good match${desc.q !== undefined ? ` for “${clip(desc.q, 80)}”` : ""} in this collection: these are only the closest items`
    : "Weaker matches below: probably not what you asked for";
  return line;
}

function render(result, desc, label, image) {
  const grid = $("results");
  state.hits = result.hits;
  const cards = result.hits.map((hit, i) => card(hit, i, desc.collection));
  const firstWeak = result.hits.findIndex((h) => h.good_match === false);
  if (firstWeak >= 0) cards.splice(firstWeak, 0, weakDivider(firstWeak === 0, desc));
  grid.replaceChildren(...cards);
  grid.classList.remove("loading");
  grid.removeAttribute("aria-busy");
  if (!result.hits.length) {
    const empty = document.createElement("p");
    empty.className = "empty";
    empty.textContent = "No results.";
    grid.append(empty);
  }
  const good = result.hits.filter((h) => h.good_match === true).length;
  const goodNote = firstWeak >= 0 ? ` (${good} good, ${result.hits.length - good} weak)` : "";
  setStatus(`${label} — ${result.hits.length} ${result.modality}s${goodNote} in ${result.took_ms} ms`, { image });
}

async function run(desc, label, request, image = null) {
  const seq = ++state.seq;
  state.current = desc;
  closeViewer();
  clearMessage();
  const grid = $("results");
  grid.classList.add("loading");  // the old results stay, dimmed and inert, until the new ones arrive
  grid.setAttribute("aria-busy", "true");
  setStatus(`Searching ${label}…`, { image, busy: true });
  try {
    const result = await request();
    if (seq === state.seq) render(result, desc, label, image);
  } catch (err) {
    if (seq === state.seq) showError(err);
  }
}

// -- the searches ----------------------------------------------------------------------------------
function params(desc) { return `k=${desc.k}&modality=${desc.modality}`; }

function preview(collection, imageId, alt) {
  if (imageId === null || imageId === undefined) return null;
  const img = document.createElement("img");
  img.alt = alt;
  showThumb(img, collection, imageId);
  return img;
}

function execute(desc) {
  const base = collectionBase(desc.collection);
  if (desc.q !== undefined) {
    return run(desc, `“${desc.q}”`, () => api(`${base}/search?q=${encodeURIComponent(desc.q)}&${params(desc)}`));
  }
  if (desc.similar !== undefined) {
    return (async () => {
      let item = desc.item;
      if (!item) {  // from the address: look the item up for its name
        const seq = ++state.seq;
        try {
          item = await api(`${base}/items/${desc.similar}`);
        } catch (err) {
          if (seq === state.seq) { state.current = desc; showError(err); }
          return;
        }
        if (seq !== state.seq) return;
        desc.item = item;
      }
      const label = `similar to ${nameOf(item)}`;
      await run(desc, label, () => api(`${base}/items/${desc.similar}/similar?${params(desc)}`),
                preview(desc.collection, imageIdOf(item), label));
    })();
  }
  if (desc.upload !== undefined) {
    const file = state.uploads.get(desc.upload);
    if (!file) {
      state.current = desc;
      $("results").replaceChildren();
      setStatus("");
      showMessage(`The image ${desc.name || ""} searched here is not kept in the address: choose it again.`);
      return Promise.resolve();
    }
    const img = document.createElement("img");
    img.src = URL.createObjectURL(file);
    img.alt = "query image";
    return run(desc, `by image ${file.name || ""}`.trim(), () => {
      const form = new FormData();
      form.append("file", file, file.name || "upload");
      return api(`${base}/search/image?${params(desc)}`, { method: "POST", body: form });
    }, img);
  }
  state.current = null;
  state.hits = [];
  $("results").replaceChildren();
  setStatus("Type a query, choose or drop an image, or open a result and ask for similar items.");
  return Promise.resolve();
}

// a new search: into the address (a new history entry) and run
function go(desc) {
  if (desc.upload === undefined) { delete desc.name; }
  remember(desc, true);
  setControls(desc);
  return execute(desc);
}

function searchText(q) { return go({ ...controls(), q }); }

function searchImage(file) {
  const token = `u${Date.now()}${Math.random().toString(36).slice(2, 8)}`;
  state.uploads.set(token, file);
  return go({ ...controls(), upload: token, name: file.name || "" });
}

function searchSimilar(hit) {
  const desc = { ...controls(), collection: state.current ? state.current.collection : controls().collection,
                 similar: String(hit.id) };
  remember(desc, true);
  setControls(desc);
  return execute({ ...desc, item: hit });
}

function rerun() {
  const cur = state.current;
  if (!cur) { remember(controls(), false); return; }
  go({ ...cur, ...controls(), collection: cur.collection });
}

// -- the full-size view ----------------------------------------------------------------------------
function openViewer(index, opener = null) {
  if (index < 0 || index >= state.hits.length) return;
  const hit = state.hits[index];
  const collection = state.current.collection;
  const viewer = $("viewer");
  if (viewer.hidden) state.opener = opener;
  state.viewing = index;
  viewer.hidden = false;
  document.body.classList.add("viewing");
  const img = $("viewer-img");
  const text = $("viewer-text");
  const imageId = imageIdOf(hit);
  text.hidden = hit.modality !== "text";
  text.textContent = hit.modality === "text" ? hit.text || "" : "";
  const original = $("viewer-original");
  if (imageId !== null) {
    img.hidden = false;
    img.alt = hit.caption || hit.text || baseName(hit.uri) || `item ${hit.id}`;
    img.removeAttribute("srcset");
    img.dataset.id = imageId;
    const full = imageUrl(collection, imageId);
    const thumb = imageUrl(collection, imageId, THUMB_SIZE * 2);
    const swap = (url) => { if (state.viewing === index && img.dataset.id === String(imageId)) img.src = url; };
    const fallback = () => swap(imageUrl(collection, imageId, 1024));  // the original is not an image a browser shows
    if (state.apiKey) {
      img.removeAttribute("src");
      keyedUrl(full).then((u) => { swap(u); original.href = u; }).catch(fallback);
    } else {
      img.src = thumb;  // shown at once (usually cached), replaced by the original when it is in
      const loader = new Image();
      loader.onload = () => swap(full);
      loader.onerror = fallback;
      loader.src = full;
      original.href = full;
    }
    original.hidden = false;
  } else {
    img.hidden = true;
    img.removeAttribute("src");
    original.hidden = true;
  }
  $("viewer-name").textContent = baseName(hit.uri) || (hit.modality === "image" ? `item ${hit.id}` : `text ${hit.id}`);
  $("viewer-caption").textContent = hit.modality === "image" ? hit.caption || "" : "";
  $("viewer-path").textContent = hit.uri || "";
  const weak = hit.good_match === false ? " · weak match" : hit.good_match === true ? " · good match" : "";
  $("viewer-meta").textContent = `${index + 1} / ${state.hits.length} · score ${hit.score.toFixed(3)}${weak}`;
  $("viewer-prev").disabled = index === 0;
  $("viewer-next").disabled = index === state.hits.length - 1;
  $("viewer-close").focus({ preventScroll: true });
}

function closeViewer() {
  if (state.viewing < 0) return;
  state.viewing = -1;
  $("viewer").hidden = true;
  $("viewer-img").removeAttribute("src");
  document.body.classList.remove("viewing");
  const opener = state.opener;
  state.opener = null;
  if (opener && opener.isConnected) opener.focus({ preventScroll: true });
}

function step(delta) {
  if (state.viewing < 0) return;
  const next = state.viewing + delta;
  if (next < 0 || next >= state.hits.length) return;
  openViewer(next);
  const cardEl = document.querySelector(`.hit[data-index="${next}"]`);
  if (cardEl) { state.opener = cardEl; cardEl.scrollIntoView({ block: "nearest" }); }
}

// -- start-up --------------------------------------------------------------------------------------
async function loadCollections() {
  try {
    const { collections } = await api("/api/collections");
    state.collections = collections.map((c) => c.name);
    $("collection").replaceChildren(...collections.map((c) => {
      const option = document.createElement("option");
      option.value = c.name;
      option.textContent = `${c.name} (${c.images} images, ${c.texts} texts)`;
      return option;
    }));
    clearMessage();
    return true;
  } catch (err) {
    setStatus("");
    showMessage(err.message, { kind: "error", title: "Cannot list the collections:" });
    return false;
  }
}

// show what the address says (on load, and on Back/Forward)
function fromAddress(saved) {
  const desc = saved ? { ...saved } : fromUrl();
  for (const key of Object.keys(desc)) if (desc[key] === undefined || desc[key] === null) delete desc[key];
  if (desc.collection && !state.collections.includes(desc.collection)) {
    setControls({ ...desc, collection: "" });
    state.current = null;
    $("results").replaceChildren();
    setStatus("");
    showMessage(`This address names a collection this server does not have: ${desc.collection}. It has: `
                + `${state.collections.join(", ")}.`, { kind: "error", title: "Unknown collection." });
    return;
  }
  if (!desc.collection) desc.collection = $("collection").value;
  setControls(desc);
  if (!saved) history.replaceState(historyState(desc), "", toUrl(desc));
  execute(desc);
}

async function start() {
  if (await loadCollections()) fromAddress(null);
}

function wire() {
  $("search-form").addEventListener("submit", (e) => {
    e.preventDefault();
    const q = $("q").value.trim();
    if (!q) {
      showMessage("Type a few words describing what you are looking for (for example “a red car”), "
                  + "or choose, drop or paste an image.", { title: "Empty query." });
      $("q").focus();
      return;
    }
    searchText(q);
  });
  $("file").addEventListener("change", (e) => { if (e.target.files[0]) searchImage(e.target.files[0]); e.target.value = ""; });
  document.querySelectorAll("input[name=modality]").forEach((r) => r.addEventListener("change", rerun));
  $("k").addEventListener("change", rerun);
  $("collection").addEventListener("change", () => {
    const cur = state.current;
    if (cur && (cur.q !== undefined || cur.upload !== undefined)) {  // the same text or image, in the other collection
      const { item, ...rest } = cur;
      go({ ...rest, ...controls() });
    } else {  // an item id means nothing in another collection
      go({ ...controls() });
    }
  });
  window.addEventListener("popstate", (e) => {
    if (!state.collections.length) return;
    fromAddress(e.state && e.state.mmsearch ? e.state.mmsearch : null);
  });
  $("key-form").addEventListener("submit", (e) => {
    e.preventDefault();
    state.apiKey = $("api-key").value.trim();
    sessionStorage.setItem("mmsearch-api-key", state.apiKey);
    $("key-form").hidden = true;
    start();
  });
  $("viewer-close").addEventListener("click", closeViewer);
  $("viewer-prev").addEventListener("click", () => step(-1));
  $("viewer-next").addEventListener("click", () => step(1));
  $("viewer-similar").addEventListener("click", () => {
    const hit = state.hits[state.viewing];
    if (hit) searchSimilar(hit);
  });
  $("viewer").addEventListener("click", (e) => {  // a click on the backdrop, not on the picture or the buttons
    if (e.target === $("viewer") || e.target === $("viewer-figure")) closeViewer();
  });
  document.addEventListener("keydown", (e) => {
    if (state.viewing < 0 || e.altKey || e.ctrlKey || e.metaKey) return;
    if (e.key === "Escape") { e.preventDefault(); closeViewer(); }
    else if (e.key === "ArrowLeft") { e.preventDefault(); step(-1); }
    else if (e.key === "ArrowRight") { e.preventDefault(); step(1); }
    else if (e.key === "Tab") {  // keep focus inside the dialog
      const focusable = [...$("viewer").querySelectorAll("button:not([disabled]), a[href]:not([hidden])")];
      const i = focusable.indexOf(document.activeElement);
      const j = e.shiftKey ? (i <= 0 ? focusable.length - 1 : i - 1) : (i + 1) % focusable.length;
      e.preventDefault();
      focusable[j].focus();
    }
  });
  document.addEventListener("dragover", (e) => { e.preventDefault(); document.body.classList.add("dragging"); });
  document.addEventListener("dragleave", (e) => { if (!e.relatedTarget) document.body.classList.remove("dragging"); });
  document.addEventListener("drop", (e) => {
    e.preventDefault();
    document.body.classList.remove("dragging");
    const file = e.dataTransfer.files[0];
    if (file) searchImage(file);
  });
  document.addEventListener("paste", (e) => {
    const file = [...e.clipboardData.files].find((f) => f.type.startsWith("image/"));
    if (file) searchImage(file);
  });
}

wire();
start();

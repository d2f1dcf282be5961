// mmsearch web page: plain JS over the JSON API (no build step). Untrusted text only ever goes in via textContent.
"use strict";

const $ = (id) => document.getElementById(id);
const state = { apiKey: sessionStorage.getItem("mmsearch-api-key") || "", last: null };

function collection() { return $("collection").value; }
function modality() { return document.querySelector("input[name=modality]:checked").value; }
function base() { return `/api/collections/${encodeURIComponent(collection())}`; }

async function api(path, options = {}) {
  const headers = Object.assign({}, options.headers || {});
  if (state.apiKey) headers["X-API-Key"] = state.apiKey;
  const response = await fetch(path, Object.assign({}, options, { headers }));
  const body = await response.json().catch(() => ({}));
  if (!response.ok) {
    if (response.status === 401) $("key-form").hidden = false;
    throw new Error((body.error && body.error.message) || `${response.status} ${response.statusText}`);
  }
  return body;
}

function setStatus(text, { error = false, image = null } = {}) {
  const status = $("status");
  status.replaceChildren();
  status.classList.toggle("error", error);
  if (image) status.append(image);
  status.append(document.createTextNode(text));
}

async function showImage(img, url) {
  if (!state.apiKey) { img.src = url; return; }
  try {  // an <img src> cannot send the key header: fetch the bytes instead
    const response = await fetch(url, { headers: { "X-API-Key": state.apiKey } });
    if (response.ok) img.src = URL.createObjectURL(await response.blob());
  } catch (e) { /* leave the placeholder */ }
}

function thumbUrl(id) { return `${base()}/items/${id}/thumbnail?size=256`; }

function card(hit) {
  const el = document.createElement("article");
  el.className = `hit ${hit.modality}`;
  el.tabIndex = 0;
  el.dataset.id = hit.id;
  el.title = `Find items similar to #${hit.id}`;
  const imageId = hit.modality === "image" ? hit.id : hit.metadata && hit.metadata.image_id;
  if (imageId !== null && imageId !== undefined) {
    const img = document.createElement("img");
    img.className = "thumb";
    img.loading = "lazy";
    img.alt = hit.caption || hit.text || `item ${hit.id}`;
    showImage(img, thumbUrl(imageId));
    el.append(img);
  }
  const body = document.createElement("div");
  body.className = "body";
  const score = document.createElement("span");
  score.className = "score";
  score.textContent = hit.score.toFixed(3);
  const caption = document.createElement("div");
  caption.className = "caption";
  caption.textContent = hit.modality === "text" ? hit.text : (hit.caption || "");
  const uri = document.createElement("div");
  uri.className = "uri";
  uri.textContent = hit.uri ? hit.uri.split("/").pop() : "";
  uri.title = hit.uri || "";
  body.append(score, caption, uri);
  el.append(body);
  const similar = () => searchSimilar(hit);
  el.addEventListener("click", similar);
  el.addEventListener("keydown", (e) => { if (e.key === "Enter") similar(); });
  return el;
}

function render(result, label, image) {
  const grid = $("results");
  grid.replaceChildren(...result.hits.map(card));
  if (!result.hits.length) {
    const empty = document.createElement("p");
    empty.className = "empty";
    empty.textContent = "No results.";
    grid.append(empty);
  }
  setStatus(`${label} — ${result.hits.length} ${result.modality}s in ${result.took_ms} ms`, { image });
}

async function run(label, request, image = null) {
  state.last = { label, request, image };
  setStatus(`Searching ${label}…`);
  try {
    render(await request(), label, image);
  } catch (err) {
    $("results").replaceChildren();
    setStatus(err.message, { error: true });
  }
}

function params() { return `k=${$("k").value}&modality=${modality()}`; }

function searchText(q) {
  run(`“${q}”`, () => api(`${base()}/search?q=${encodeURIComponent(q)}&${params()}`));
}

function searchImage(file) {
  const preview = document.createElement("img");
  preview.src = URL.createObjectURL(file);
  preview.alt = "query image";
  run(`by image ${file.name || ""}`.trim(), () => {
    const form = new FormData();
    form.append("file", file, file.name || "upload");
    return api(`${base()}/search/image?${params()}`, { method: "POST", body: form });
  }, preview);
}

function searchSimilar(hit) {
  let preview = null;
  const imageId = hit.modality === "image" ? hit.id : hit.metadata && hit.metadata.image_id;
  if (imageId !== null && imageId !== undefined) {
    preview = document.createElement("img");
    preview.alt = `item ${hit.id}`;
    showImage(preview, thumbUrl(imageId));
  }
  run(`similar to #${hit.id}`, () => api(`${base()}/items/${hit.id}/similar?${params()}`), preview);
}

async function loadCollections() {
  try {
    const { collections } = await api("/api/collections");
    $("collection").replaceChildren(...collections.map((c) => {
      const option = document.createElement("option");
      option.value = c.name;
      option.textContent = `${c.name} (${c.images} images, ${c.texts} texts)`;
      return option;
    }));
    setStatus("Type a query, choose or drop an image, or click a result to find similar items.");
  } catch (err) {
    setStatus(err.message, { error: true });
  }
}

function rerun() { if (state.last) run(state.last.label, state.last.request, state.last.image); }

function wire() {
  $("search-form").addEventListener("submit", (e) => {
    e.preventDefault();
    const q = $("q").value.trim();
    if (q) searchText(q);
  });
  $("file").addEventListener("change", (e) => { if (e.target.files[0]) searchImage(e.target.files[0]); e.target.value = ""; });
  document.querySelectorAll("input[name=modality]").forEach((r) => r.addEventListener("change", rerun));
  $("k").addEventListener("change", rerun);
  $("collection").addEventListener("change", () => { state.last = null; $("results").replaceChildren(); });
  $("key-form").addEventListener("submit", (e) => {
    e.preventDefault();
    state.apiKey = $("api-key").value.trim();
    sessionStorage.setItem("mmsearch-api-key", state.apiKey);
    $("key-form").hidden = true;
    loadCollections();
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
loadCollections();

// covip photo chat: plain JS, no dependencies. Talks to the same server's /v1 API.
"use strict";

const $ = (id) => document.getElementById(id);
const TOKEN_KEY = "covip-token";
const USER_KEY = "covip-user";
let photo = null;          // {file, dataUrl} of the chosen photo
let pendingRetry = null;   // what to run again once a token is given

// ------------------------------------------------------------------ API calls (with the token, if any)
class ApiError extends Error {
  constructor(status, message) { super(message); this.status = status; }
}

function headers(extra) {
  const h = Object.assign({}, extra || {});
  const token = sessionStorage.getItem(TOKEN_KEY);
  if (token) h["Authorization"] = "Bearer " + token;
  return h;
}

async function api(path, options) {
  const opts = Object.assign({}, options || {});
  opts.headers = headers(opts.headers);
  const response = await fetch(path, opts);
  if (response.status === 401) {
    sessionStorage.removeItem(TOKEN_KEY);
    $("token-form").hidden = false;
    $("token").focus();
  }
  if (!response.ok) {
    let message = response.status + " " + response.statusText;
    try { message = (await response.json()).error.message || message; } catch (e) { /* not JSON */ }
    throw new ApiError(response.status, message);
  }
  return response;
}

const user = () => $("user").value.trim() || "me";
const userPath = () => "/v1/users/" + encodeURIComponent(user());

function status(text, isError) {
  const el = $("status");
  el.textContent = text;
  el.className = isError ? "error" : "";
}

function fail(err, retry) {
  if (err instanceof ApiError && err.status === 401) {
    pendingRetry = retry || null;
    status("This server needs an API token.", true);
  } else {
    status(String(err.message || err), true);
  }
}

async function ensureUser() {
  await api("/v1/users", {method: "POST", headers: {"Content-Type": "application/json"},
                          body: JSON.stringify({name: user(), exist_ok: true})});
}

// ------------------------------------------------------------------ start
async function init() {
  try {
    const models = await (await api("/v1/models")).json();
    const model = models.data[0];
    $("model").textContent = "model: " + model.id;
    $("meaningless").hidden = !(model.covip && model.covip.meaningless);
    status("Ready. Pick a photo, then ask about it or remember it.");
  } catch (err) { fail(err, init); }
}

$("token-form").addEventListener("submit", (ev) => {
  ev.preventDefault();
  const token = $("token").value.trim();
  if (!token) return;
  sessionStorage.setItem(TOKEN_KEY, token);
  $("token").value = "";
  $("token-form").hidden = true;
  const retry = pendingRetry;
  pendingRetry = null;
  init().then(() => { if (retry && retry !== init) retry(); });
});

$("user").value = localStorage.getItem(USER_KEY) || "me";
$("user").addEventListener("change", () => localStorage.setItem(USER_KEY, user()));

// ------------------------------------------------------------------ choosing a photo
function choose(file) {
  if (!file) return;
  if (!file.type.startsWith("image/")) { status(file.name + " is not an image", true); return; }
  const reader = new FileReader();
  reader.onload = () => {
    photo = {file: file, dataUrl: reader.result};
    $("preview").src = reader.result;
    $("preview").hidden = false;
    $("drop-hint").hidden = true;
    status("Photo " + file.name + " chosen.");
  };
  reader.readAsDataURL(file);
}

$("file").addEventListener("change", () => choose($("file").files[0]));
const drop = $("drop");
["dragenter", "dragover"].forEach((t) => drop.addEventListener(t, (ev) => {
  ev.preventDefault(); drop.classList.add("over");
}));
["dragleave", "drop"].forEach((t) => drop.addEventListener(t, (ev) => {
  ev.preventDefault(); drop.classList.remove("over");
}));
drop.addEventListener("drop", (ev) => choose(ev.dataTransfer.files[0]));

// ------------------------------------------------------------------ asking (streamed answer)
async function ask() {
  const question = $("question").value.trim();
  if (!photo) { status("Pick a photo first.", true); return; }
  if (!question) { status("Type a question about the photo.", true); $("question").focus(); return; }
  const answer = $("answer");
  answer.textContent = "";
  answer.className = "answer";
  $("ask").disabled = true;
  status("Thinking…");
  try {
    await ensureUser();
    const response = await api("/v1/chat/completions", {
      method: "POST", headers: {"Content-Type": "application/json"},
      body: JSON.stringify({model: "covip", user: user(), stream: true, messages: [{role: "user", content: [
        {type: "text", text: question}, {type: "image_url", image_url: {url: photo.dataUrl}}]}]}),
    });
    const reader = response.body.getReader();
    const decoder = new TextDecoder();
    let buffer = "";
    let done = false;
    while (!done) {
      const chunk = await reader.read();
      if (chunk.done) break;
      buffer += decoder.decode(chunk.value, {stream: true});
      let cut;
      while ((cut = buffer.indexOf("\n\n")) >= 0) {
        const event = buffer.slice(0, cut);
        buffer = buffer.slice(cut + 2);
        const data = event.split("\n").filter((l) => l.startsWith("data:")).map((l) => l.slice(5).trim()).join("");
        if (!data) continue;
        if (data === "[DONE]") { done = true; break; }
        const doc = JSON.parse(data);
        if (doc.error) throw new ApiError(doc.error.status || 500, doc.error.message);
        const choice = (doc.choices || [])[0];
        if (choice && choice.delta && choice.delta.content) answer.textContent += choice.delta.content;
        if (doc.covip) showProvenance(doc.covip);
      }
    }
    answer.dataset.done = "1";
    status("Answered.");
  } catch (err) {
    answer.className = "answer error";
    answer.textContent = String(err.message || err);
    fail(err, ask);
  } finally {
    $("ask").disabled = false;
  }
}

$("ask-form").addEventListener("submit", (ev) => { ev.preventDefault(); ask(); });

function showProvenance(p) {
  $("caption-box").hidden = p.caption == null;
  $("caption").textContent = p.caption || "";
  $("caption-state").textContent = p.caption == null ? "" : (p.cache_hit ? "(from the cache)" : "(generated)");
  renderMemories(p.memories || [], p.abstain_reason);
}

function renderMemories(items, reason) {
  const list = $("memories");
  list.textContent = "";
  $("memory-count").textContent = "(" + items.length + ")";
  if (!items.length) {
    const li = document.createElement("li");
    li.className = "empty";
    li.textContent = reason || "None: nothing in this user's memory was used.";
    list.appendChild(li);
    return;
  }
  for (const m of items) {
    const li = document.createElement("li");
    li.className = "memory";
    li.dataset.photoId = m.photo_id;
    const img = document.createElement("img");
    img.alt = (m.concepts || []).join(", ") || "memory photo";
    li.appendChild(img);
    if (m.photo_url) loadThumbnail(img, m.photo_url);
    const text = document.createElement("div");
    const meta = document.createElement("div");
    meta.className = "meta";
    const bits = [(m.concepts || []).join(", ") || "no concepts", "similarity " + Number(m.score).toFixed(2)];
    if (m.taken_at) bits.push(m.taken_at.slice(0, 10));
    if (m.place) bits.push(m.place);
    if (m.shared) bits.push("shared by " + m.owner);
    meta.textContent = bits.join(" · ");
    const dialogue = document.createElement("p");
    dialogue.className = "dialogue";
    dialogue.textContent = snippet(m.dialogue || "");
    text.append(meta, dialogue);
    li.appendChild(text);
    if (!m.shared) {
      const forget = document.createElement("button");
      forget.type = "button";
      forget.className = "secondary forget";
      forget.textContent = "Forget";
      forget.title = "Forget this photo with its dialogues";
      forget.addEventListener("click", () => forgetPhoto(m.photo_id, li, forget));
      li.appendChild(forget);
    }
    list.appendChild(li);
  }
}

function snippet(text) {
  const flat = text.split("\n").map((l) => l.trim()).filter(Boolean).join(" / ");
  return flat.length > 220 ? flat.slice(0, 217) + "…" : flat;
}

async function loadThumbnail(img, url) {
  try {
    const blob = await (await api(url)).blob();
    img.onload = () => { img.dataset.loaded = "1"; };
    img.src = URL.createObjectURL(blob);
  } catch (err) { img.title = String(err.message || err); }
}

async function forgetPhoto(photoId, li, button) {
  button.disabled = true;
  try {
    const report = await (await api(userPath() + "/photos/" + photoId, {method: "DELETE"})).json();
    li.remove();
    $("memory-count").textContent = "(" + $("memories").querySelectorAll("li.memory").length + ")";
    status("Forgot photo " + photoId + " with " + report.forgot.episodes + " dialogue(s).");
  } catch (err) {
    button.disabled = false;
    fail(err);
  }
}

// ------------------------------------------------------------------ remembering
async function remember() {
  if (!photo) { status("Pick a photo first.", true); return; }
  const note = $("note").value.trim();
  if (!note) { status("Write a note about the photo first.", true); $("note").focus(); return; }
  const form = new FormData();
  form.append("photo", photo.file, photo.file.name);
  form.append("dialogue", note);
  $("concepts").value.split(",").map((c) => c.trim()).filter(Boolean).forEach((c) => form.append("concepts", c));
  $("remember").disabled = true;
  try {
    const done = await (await api(userPath() + "/memories", {method: "POST", body: form})).json();
    const about = done.episode && done.episode.concepts.length ? " about " + done.episode.concepts.join(", ") : "";
    status("Remembered photo " + done.photo.id + about + (done.new_photo ? "." : " (a new dialogue)."));
    $("note").value = "";
    $("concepts").value = "";
  } catch (err) {
    fail(err, remember);
  } finally {
    $("remember").disabled = false;
  }
}

$("remember-form").addEventListener("submit", (ev) => { ev.preventDefault(); remember(); });

init();

// rollbackctl console: passkey ceremonies, live regions (server-sent events), countdowns.
// Written for this project and served from the repo; nothing is fetched from elsewhere.
"use strict";

const b64u = {
  toBuf(s) {
    const b = atob(s.replace(/-/g, "+").replace(/_/g, "/") + "===".slice((s.length + 3) % 4));
    return Uint8Array.from(b, (c) => c.charCodeAt(0)).buffer;
  },
  fromBuf(buf) {
    let s = "";
    new Uint8Array(buf).forEach((x) => (s += String.fromCharCode(x)));
    return btoa(s).replace(/\+/g, "-").replace(/\//g, "_").replace(/=+$/, "");
  },
};

function csrf() {
  const m = document.querySelector('meta[name="csrf-token"]');
  return m ? m.content : "";
}

async function postJSON(url, body) {
  const r = await fetch(url, {
    method: "POST",
    credentials: "same-origin",
    headers: { "Content-Type": "application/json", "X-CSRF-Token": csrf() },
    body: JSON.stringify(body || {}),
  });
  let data = {};
  try { data = await r.json(); } catch (e) { data = { error: r.status + " " + r.statusText }; }
  if (!r.ok) throw new Error(data.error || r.status + " " + r.statusText);
  return data;
}

function say(id, text, cls) {
  const el = document.getElementById(id);
  if (el) { el.textContent = text; el.className = "msg " + (cls || ""); }
}

function credentialJSON(c) {
  const r = c.response;
  const out = { id: c.id, rawId: b64u.fromBuf(c.rawId), type: c.type,
                clientExtensionResults: c.getClientExtensionResults ? c.getClientExtensionResults() : {},
                authenticatorAttachment: c.authenticatorAttachment || undefined, response: {} };
  out.response.clientDataJSON = b64u.fromBuf(r.clientDataJSON);
  if (r.attestationObject) {
    out.response.attestationObject = b64u.fromBuf(r.attestationObject);
    if (r.getTransports) out.response.transports = r.getTransports();
  } else {
    out.response.authenticatorData = b64u.fromBuf(r.authenticatorData);
    out.response.signature = b64u.fromBuf(r.signature);
    if (r.userHandle) out.response.userHandle = b64u.fromBuf(r.userHandle);
  }
  return out;
}

async function registerPasskey(ev) {
  ev.preventDefault();
  const f = ev.target;
  say("register-msg", "Creating a passkey: follow your browser's prompt...");
  try {
    const opts = await postJSON("/auth/register/begin", { operator: f.operator.value.trim(), label: f.label.value.trim() });
    opts.challenge = b64u.toBuf(opts.challenge);
    opts.user.id = b64u.toBuf(opts.user.id);
    (opts.excludeCredentials || []).forEach((c) => (c.id = b64u.toBuf(c.id)));
    const cred = await navigator.credentials.create({ publicKey: opts });
    const done = await postJSON("/auth/register/finish", { credential: credentialJSON(cred) });
    const box = document.getElementById("register-done");
    box.hidden = false;
    document.getElementById("register-code").textContent = done.code;
    document.getElementById("register-cmd").textContent = done.approve;
    say("register-msg", done.message, "ok");
  } catch (e) {
    say("register-msg", "Refused: " + e.message, "bad");
  }
}

async function signIn(ev) {
  ev.preventDefault();
  say("login-msg", "Asking for your passkey...");
  try {
    const opts = await postJSON("/auth/login/begin", {});
    opts.challenge = b64u.toBuf(opts.challenge);
    (opts.allowCredentials || []).forEach((c) => (c.id = b64u.toBuf(c.id)));
    const cred = await navigator.credentials.get({ publicKey: opts });
    const next = new URLSearchParams(location.search).get("next") || "/matrix";
    const done = await postJSON("/auth/login/finish", { credential: credentialJSON(cred), next: next });
    say("login-msg", "Signed in as " + done.operator + " (" + done.role + ")", "ok");
    location.assign(done.next);
  } catch (e) {
    say("login-msg", "Refused: " + e.message, "bad");
  }
}

async function decide(ev) {
  ev.preventDefault();
  const f = ev.target, msg = f.querySelector(".msg"), btn = f.querySelector("button");
  const body = { kind: f.dataset.kind };
  f.querySelectorAll("select").forEach((i) => (body[i.name] = i.value));
  f.querySelectorAll("input").forEach((i) => {
    if (i.type === "checkbox") body[i.name] = i.checked;
    else if (i.value.trim() !== "") body[i.name] = i.name === "level" ? Number(i.value) : i.value.trim();
  });
  msg.className = "msg"; msg.textContent = "Preparing the signed request...";
  if (btn) btn.disabled = true;
  try {
    const prep = await postJSON(f.dataset.url + "/prepare", body);
    const pk = prep.publicKey;
    pk.challenge = b64u.toBuf(pk.challenge);
    pk.allowCredentials.forEach((c) => (c.id = b64u.toBuf(c.id)));
    msg.textContent = "Sign with your passkey: " + prep.request.action + " at step " + prep.request.step;
    const cred = await navigator.credentials.get({ publicKey: pk });
    const done = await postJSON(f.dataset.url + "/submit", { nonce: prep.nonce, credential: credentialJSON(cred) });
    msg.className = "msg ok"; msg.textContent = done.message;
  } catch (e) {
    msg.className = "msg bad"; msg.textContent = "Refused: " + e.message;
    if (btn) btn.disabled = false;
  }
}

function two(n) { return String(n).padStart(2, "0"); }

function human(s) {
  s = Math.floor(Math.abs(s));
  const h = Math.floor(s / 3600), m = Math.floor((s % 3600) / 60), x = s % 60;
  return (h ? h + ":" + two(m) : m) + ":" + two(x);
}

function tick() {
  const now = Date.now();
  document.querySelectorAll("[data-until]").forEach((el) => {
    const left = (Date.parse(el.dataset.until) - now) / 1000;
    const what = el.dataset.what || "left";
    if (left >= 0) { el.textContent = human(left) + " " + what; el.classList.remove("overdue"); }
    else { el.textContent = "overdue by " + human(-left); el.classList.add("overdue"); }
  });
}

function live() {
  document.querySelectorAll("[data-live]").forEach((el) => {
    const state = document.getElementById("live-state");
    const es = new EventSource(el.dataset.live);
    es.addEventListener("fragment", (e) => { el.innerHTML = e.data; tick(); if (state) { state.textContent = "live"; state.className = "live"; } });
    es.addEventListener("gone", (e) => { if (state) { state.textContent = e.data; state.className = "stale"; } es.close(); });
    es.onerror = () => { if (state) { state.textContent = "reconnecting..."; state.className = "stale"; } };
  });
}

document.addEventListener("DOMContentLoaded", () => {
  const r = document.getElementById("register-form");
  if (r) r.addEventListener("submit", registerPasskey);
  const l = document.getElementById("login-form");
  if (l) l.addEventListener("submit", signIn);
  document.querySelectorAll("form.decide").forEach((f) => f.addEventListener("submit", decide));
  live();
  tick();
  setInterval(tick, 1000);
});

// The station console page: sign-in, the officer's enrollment flow, the status bar and the
// field engineer's page. The controller's session is the source of truth: every screen is
// drawn from the session view it returns, so a reload or a new browser resumes where the
// session is. No framework, no build step, nothing loaded from the internet.
"use strict";

const $ = (id) => document.getElementById(id);
const LANGUAGES = ["vi", "en"];
const STEPS = ["portrait", "fingers", "exception_photo", "review"];
const HANDS = [[10, 9, 8, 7, 6], [1, 2, 3, 4, 5]];  // as the officer faces the applicant's hands
const ACTIVITY_EVERY_MS = 20000;

const state = {
  account: null, language: "vi", catalogs: {}, ws: null, nextId: 1, pending: new Map(),
  hello: null, status: null, session: null, applicant: null, selected: null, fingers: {},
  busy: false, preview: null, streak: 0, feedback: {}, lastActivity: 0, events: [], view: null, quality: null,
};
window.station = state;  // for the browser tests and the preview benchmark
state.previewStats = { frames: 0, latencies_ms: [], first_ms: null, last_ms: null };

// -- language ---------------------------------------------------------------------------------
async function loadCatalog(language) {
  if (!state.catalogs[language]) {
    const response = await fetch(`/i18n/${language}.json`);
    state.catalogs[language] = await response.json();
  }
}

function t(key, vars) {
  let text = (state.catalogs[state.language] || {})[key];
  if (text === undefined) text = (state.catalogs.en || {})[key];
  if (text === undefined) return null;
  for (const [name, value] of Object.entries(vars || {})) text = text.split(`{${name}}`).join(String(value));
  return text;
}

function tr(key, vars, fallback) {
  const text = t(key, vars);
  return text === null ? (fallback !== undefined ? fallback : key) : text;
}

function translatePage() {
  document.documentElement.lang = state.language;
  for (const el of document.querySelectorAll("[data-i18n]")) el.textContent = tr(el.dataset.i18n);
  $("language").textContent = state.language === "vi" ? "English" : "Tiếng Việt";
  document.title = tr("ui.title");
}

async function setLanguage(language) {
  state.language = language;
  await Promise.all([loadCatalog(language), loadCatalog("en")]);
  translatePage();
  if (state.view === "start") buildApplicantForm();
  render();
}

function errorText(error) {
  return tr(`error.${error.code}`, {}, error.message);
}

// -- views ------------------------------------------------------------------------------------
function show(view) {
  state.view = view;
  for (const name of ["sign-in", "start", "session", "done", "engineer"]) $(`view-${name}`).hidden = name !== view;
  $("sign-out").hidden = !state.account;
  $("engineer-tab").hidden = !(state.account && state.account.role === "engineer") || view === "engineer";
  if (view !== "session") closePreview();
}

function focusFirst(selector) {
  const el = document.querySelector(selector);
  if (el) el.focus();
}

// -- sign-in ----------------------------------------------------------------------------------
async function signIn(event) {
  event.preventDefault();
  $("sign-in-error").textContent = "";
  const response = await fetch("/api/sign-in", {
    method: "POST", headers: { "Content-Type": "application/json" },
    body: JSON.stringify({ user: $("sign-in-user").value.trim(), password: $("sign-in-password").value }),
  });
  const body = await response.json();
  $("sign-in-password").value = "";
  if (!body.ok) {
    const minutes = Math.max(1, Math.ceil((body.error.retry_after_s || 0) / 60));
    $("sign-in-error").textContent = tr(`signin.${body.error.code}`, { minutes }, body.error.message);
    focusFirst("#sign-in-password");
    return;
  }
  await signedIn(body);
}

async function signedIn(account) {
  state.account = account;
  $("who").textContent = account.display_name;
  await setLanguage(account.language || "vi");
  connect();
}

async function signOut() {
  await fetch("/api/sign-out", { method: "POST" });
  signedOut("");
}

function signedOut(reason) {
  state.account = null;
  state.session = null;
  if (state.ws) { state.ws.onclose = null; state.ws.close(); state.ws = null; }
  $("who").textContent = "";
  $("sign-in-error").textContent = reason ? tr(`signin.${reason}`, {}, "") : "";
  show("sign-in");
  focusFirst("#sign-in-user");
}

// -- the event and command socket -------------------------------------------------------------
function connect() {
  const ws = new WebSocket(`ws://${location.host}/ws`);
  state.ws = ws;
  ws.onmessage = (message) => onMessage(JSON.parse(message.data));
  ws.onclose = () => {
    for (const { reject } of state.pending.values()) reject({ code: "console_disconnected", message: "disconnected" });
    state.pending.clear();
    if (state.ws === ws && state.account) setTimeout(resume, 1000);
  };
}

async function resume() {
  // The console restarted or the link dropped: sign-ins live in the console, so a
  // restarted console asks for the password again; a console still down is asked again.
  let response;
  try { response = await fetch("/api/me"); } catch (error) { setTimeout(resume, 1000); return; }
  if (response.status === 401) { signedOut("expired"); return; }
  if (!response.ok) { setTimeout(resume, 1000); return; }
  connect();
}

function command(cmd, args) {
  return new Promise((resolve, reject) => {
    if (!state.ws || state.ws.readyState !== WebSocket.OPEN) {
      reject({ code: "console_disconnected", message: "not connected" });
      return;
    }
    const id = state.nextId++;
    state.pending.set(id, { resolve, reject });
    state.ws.send(JSON.stringify({ type: "cmd", id, cmd, args: args || {} }));
  });
}

function onMessage(message) {
  switch (message.type) {
    case "hello": onHello(message); break;
    case "reply": {
      const waiting = state.pending.get(message.id);
      if (!waiting) return;
      state.pending.delete(message.id);
      if (message.ok) waiting.resolve(message.result); else waiting.reject(message.error);
      break;
    }
    case "status": state.status = message; renderStatus(); break;
    case "event": onEvent(message.topic, message.body); break;
    case "device": onDevice(message); break;
    case "signed_out": signedOut(message.reason); break;
  }
}

async function onHello(hello) {
  state.hello = hello;
  state.status = hello.status;
  $("station").textContent = hello.station || "";
  renderStatus();
  if (state.view === "engineer") return;
  // Resume this operator's open session (after a reload, a new browser, a console restart).
  try {
    const list = await command("session.list");
    const mine = list.sessions.filter((s) => s.operator === state.account.user);
    if (mine.length) { await openSession(mine[mine.length - 1]); return; }
  } catch (error) { /* the controller is down: its banner says so */ }
  if (state.view !== "done") startView();
}

// -- status bar and banners -------------------------------------------------------------------
function renderStatus() {
  const status = state.status;
  if (!status) return;
  const devices = $("devices");
  devices.textContent = "";
  for (const [name, driver] of Object.entries(status.drivers || {})) {
    const chip = document.createElement("span");
    const bad = !driver.online || driver.state === "offline" || driver.state === "error";
    chip.className = `device ${bad ? "bad" : driver.state === "busy" ? "busy" : ""}`;
    chip.dataset.driver = name;
    chip.dataset.state = driver.online ? driver.state : "offline";
    chip.textContent = `${tr(`device.${driver.kind}`)} ${name}: ${tr(`device_state.${driver.online ? driver.state : "offline"}`, {}, driver.state)}`;
    devices.appendChild(chip);
  }
  const uplink = status.uplink || {};
  if (uplink.running) {
    const backlog = uplink.backlog || {};
    $("uplink").textContent = tr("ui.uplink_backlog", {
      records: backlog.records || 0, events: backlog.events || 0,
      age: uplink.oldest_age_s === null || uplink.oldest_age_s === undefined ? "–" : formatAge(uplink.oldest_age_s),
    });
  } else {
    $("uplink").textContent = tr("ui.uplink_not_running");
  }
  $("disk").textContent = status.free_mb === null || status.free_mb === undefined ? "" :
    tr("ui.disk_free", { gb: (status.free_mb / 1024).toFixed(1) });
  const banners = $("banners");
  banners.textContent = "";
  for (const banner of status.banners || []) {
    const div = document.createElement("div");
    div.className = `banner ${banner.severity}`;
    div.dataset.code = banner.code;
    const conditions = (banner.conditions || []).map((c) => tr(`printer.${c}`, {}, c)).join(", ");
    div.textContent = tr(`banner.${banner.code}`, {
      driver: banner.driver || "", free_mb: banner.free_mb, age: formatAge(banner.age_s || 0),
      records: banner.records || 0, conditions,
    });
    banners.appendChild(div);
  }
  if (state.view === "engineer") renderEngineerDevices();
}

function formatAge(seconds) {
  if (seconds < 120) return tr("ui.age_s", { n: Math.round(seconds) });
  if (seconds < 7200) return tr("ui.age_min", { n: Math.round(seconds / 60) });
  return tr("ui.age_h", { n: (seconds / 3600).toFixed(1) });
}

// -- demographics -----------------------------------------------------------------------------
let applicantFields = null;

async function startView() {
  state.session = null;
  state.applicant = null;
  show("start");
  if (!applicantFields) applicantFields = (await (await fetch("/api/applicant-fields")).json()).fields;
  buildApplicantForm();
  focusFirst("#applicant-fields input, #applicant-fields select");
}

function buildApplicantForm() {
  const box = $("applicant-fields");
  const values = {};
  for (const el of box.querySelectorAll("[name]")) values[el.name] = el.value;
  box.textContent = "";
  for (const field of applicantFields || []) {
    const wrap = document.createElement("div");
    wrap.className = "field";
    const label = document.createElement("label");
    label.htmlFor = `field-${field.name}`;
    label.textContent = tr(`field.${field.name}`) + (field.required ? " *" : "");
    let input;
    if (field.enum) {
      input = document.createElement("select");
      const blank = document.createElement("option");
      blank.value = "";
      blank.textContent = "—";
      input.appendChild(blank);
      for (const value of field.enum) {
        const option = document.createElement("option");
        option.value = value;
        option.textContent = tr(`${field.name}.${value}`, {}, value);
        input.appendChild(option);
      }
    } else {
      input = document.createElement("input");
      if (field.max_length) input.maxLength = field.max_length;
      if (field.name === "nationality") input.value = "VNM";
    }
    input.id = `field-${field.name}`;
    input.name = field.name;
    if (values[field.name] !== undefined) input.value = values[field.name];
    input.setAttribute("aria-describedby", `help-${field.name} error-${field.name}`);
    const help = document.createElement("div");
    help.className = "help";
    help.id = `help-${field.name}`;
    help.textContent = tr(`field.${field.name}.help`, {}, "");
    const error = document.createElement("p");
    error.className = "field-error";
    error.id = `error-${field.name}`;
    error.setAttribute("role", "alert");
    wrap.append(label, input, help, error);
    box.appendChild(wrap);
  }
}

async function startSession(event) {
  event.preventDefault();
  if (state.busy) return;
  const applicant = {};
  for (const el of $("applicant-fields").querySelectorAll("[name]")) {
    if (el.value.trim() !== "") applicant[el.name] = el.value;
  }
  for (const el of document.querySelectorAll(".field-error")) el.textContent = "";
  for (const el of $("applicant-fields").querySelectorAll("[aria-invalid]")) el.removeAttribute("aria-invalid");
  $("applicant-error").textContent = "";
  let view = null;
  try {
    state.busy = true;
    view = await command("session.start", { applicant });
  } catch (error) {
    showProblems(error);
  } finally {
    state.busy = false;
  }
  if (view) await openSession(view);
}

function showProblems(error) {
  const problems = (error.details && error.details.problems) || [];
  let first = null;
  for (const problem of problems) {
    const box = $(`error-${problem.field}`);
    if (!box) { $("applicant-error").textContent += `${problem.message}\n`; continue; }
    box.textContent = tr(`problem.${problem.code}`, { field: tr(`field.${problem.field}`) }, problem.message);
    const detail = document.createElement("small");
    detail.textContent = problem.message;
    box.appendChild(detail);
    const input = $(`field-${problem.field}`);
    input.setAttribute("aria-invalid", "true");
    first = first || input;
  }
  if (!problems.length) $("applicant-error").textContent = errorText(error);
  if (first) first.focus();
}

// -- the session ------------------------------------------------------------------------------
async function openSession(view) {
  state.session = view;
  try {
    const review = await command("session.review", { session: view.session });
    state.applicant = review.applicant;
  } catch (error) { state.applicant = null; }
  state.fingers = {};
  for (const finger of view.fingers) state.fingers[finger.position] = fingerState(finger);
  state.selected = view.next_finger;
  show("session");
  renderSession();
  focusMain();
}

function fingerState(summary) {
  if (summary.exception) return { state: "exception", exception: summary.exception };
  return { state: summary.force_captured ? "forced" : "captured", nfiq2: summary.nfiq2, attempts: summary.attempts };
}

function adopt(view) {
  state.session = view;
  for (const finger of view.fingers) state.fingers[finger.position] = fingerState(finger);
  for (const position of Object.keys(state.fingers)) {
    if (!view.fingers.some((f) => String(f.position) === position) && !["scanning", "uploading", "retry"].includes(state.fingers[position].state)) {
      delete state.fingers[position];
    }
  }
  if (!view.missing.includes(state.selected) && !state.reviewRetake) state.selected = view.next_finger;
}

function render() {
  if (state.view === "session") renderSession();
  if (state.view === "engineer") renderEngineer();
}

function renderSession() {
  const view = state.session;
  if (!view) return;
  $("applicant-name").textContent = state.applicant ? state.applicant.full_name : "";
  const steps = $("steps");
  steps.textContent = "";
  const current = state.retake || view.step;
  const wanted = STEPS.filter((s) => s !== "exception_photo" || view.exception_photo_needed || view.exception_photo);
  for (const step of wanted) {
    const li = document.createElement("li");
    li.textContent = tr(`step.${step}`);
    li.dataset.step = step;
    if (step === current) { li.className = "current"; li.setAttribute("aria-current", "step"); }
    else if (wanted.indexOf(step) < wanted.indexOf(current)) li.className = "done";
    steps.appendChild(li);
  }
  const photo = current === "portrait" || current === "exception_photo";
  $("panel-photo").hidden = !photo;
  $("panel-fingers").hidden = current !== "fingers";
  $("panel-review").hidden = current !== "review";
  if (photo) {
    $("capture-button").textContent = tr(current === "portrait" ? "ui.capture_portrait" : "ui.capture_exception_photo");
    $("capture-button").disabled = state.busy;
    $("abort-button").hidden = !state.busy;
    openPreview();
  } else {
    closePreview();
  }
  if (current === "fingers") renderFingers();
  if (current === "review") renderReview();
}

async function run(cmd, args, options) {
  // One capture or change at a time; the session view in the reply redraws the page.
  if (state.busy) return null;
  state.busy = true;
  $("session-error").textContent = "";
  renderSession();
  try {
    const result = await command(cmd, { session: state.session.session, ...(args || {}) });
    const view = result.session && typeof result.session === "object" ? result.session : result.step ? result : null;
    if (view) adopt(view);
    return result;
  } catch (error) {
    $("session-error").textContent = errorText(error);
    if (options && options.onError) options.onError(error);
    if (["no_session", "session_closed"].includes(error.code)) startView();
    return null;
  } finally {
    state.busy = false;
    if (state.view === "session") renderSession();
  }
}

async function capturePhoto() {
  const portrait = (state.retake || state.session.step) === "portrait";
  const result = await run(portrait ? "session.portrait" : "session.exception_photo");
  if (result) state.retake = null;
  renderSession();
  if (!result) focusFirst("#capture-button"); else focusMain();
}

function focusMain() {
  const step = state.retake || (state.session && state.session.step);
  focusFirst(step === "fingers" ? "#scan-button" : step === "review" ? "#finish-button" : "#capture-button");
}

// -- preview ----------------------------------------------------------------------------------
function openPreview() {
  if (state.preview) return;
  const ws = new WebSocket(`ws://${location.host}/ws/preview`);
  ws.binaryType = "arraybuffer";
  state.preview = ws;
  state.streak = 0;
  ws.onmessage = (message) => drawFrame(ws, message.data);
  ws.onclose = () => { if (state.preview === ws) { state.preview = null; setTimeout(() => { if (state.view === "session") renderSession(); }, 1000); } };
}

function closePreview() {
  if (state.preview) { const ws = state.preview; state.preview = null; ws.close(); }
}

async function drawFrame(ws, data) {
  const received = performance.timeOrigin + performance.now();
  const view = new DataView(data);
  const length = view.getUint32(0);
  const header = JSON.parse(new TextDecoder().decode(new Uint8Array(data, 4, length)));
  const bitmap = await createImageBitmap(new Blob([new Uint8Array(data, 4 + length)], { type: "image/jpeg" }));
  const canvas = $("preview");
  if (canvas.width !== bitmap.width || canvas.height !== bitmap.height) { canvas.width = bitmap.width; canvas.height = bitmap.height; }
  const g = canvas.getContext("2d");
  g.drawImage(bitmap, 0, 0);
  bitmap.close();
  overlay(g, header, canvas.width / (header.frame_width || header.width));
  ws.send("ack");
  const stats = state.previewStats;
  stats.frames += 1;
  stats.last_ms = received;
  if (stats.first_ms === null) stats.first_ms = received;
  if (header.t_acq_wall_ns) stats.latencies_ms.push(received - header.t_acq_wall_ns / 1e6);
  if (stats.latencies_ms.length > 5000) stats.latencies_ms.shift();
  state.quality = header.quality;
  if (state.view === "engineer") renderFaceChecks();
}

function overlay(g, header, scale) {
  const quality = header.quality || {};
  const face = quality.face;
  g.lineWidth = 3;
  if (face) {
    const [x, y, w, h] = face.box.map((v) => v * scale);
    g.strokeStyle = quality.passed ? "#2e7d32" : "#f5a623";
    g.strokeRect(x, y, w, h);
    if (face.eyes) {
      const [[x1, y1], [x2, y2]] = face.eyes.map(([ex, ey]) => [ex * scale, ey * scale]);
      g.strokeStyle = "#00e5ff";
      g.beginPath(); g.moveTo(x1, y1); g.lineTo(x2, y2); g.stroke();
      // The ISO/IEC 19794-5 token frame these eyes give: width 4x the eye distance,
      // eyes 0.6 width below its top, height 4/3 width.
      const ed = Math.hypot(x2 - x1, y2 - y1), width = 4 * ed, mx = (x1 + x2) / 2, my = (y1 + y2) / 2;
      g.setLineDash([8, 6]);
      g.strokeStyle = "#ffffff";
      g.strokeRect(mx - width / 2, my - 0.6 * width, width, width * 4 / 3);
      g.setLineDash([]);
    }
  }
  const hint = $("hint");
  if (quality.passed) {
    state.streak += 1;
    hint.textContent = tr("ui.hint_good");
    hint.className = "hint good";
  } else {
    state.streak = 0;
    hint.textContent = quality.hint_code ? tr(`hint.${quality.hint_code}`, {}, quality.hint || "") : "";
    hint.className = "hint";
  }
  const camera = state.hello && state.hello.camera;
  if (state.busy && camera && quality.passed) {
    const perPreview = camera.fps / camera.preview_fps;
    const left = Math.max(0, Math.ceil((camera.consecutive_frames - state.streak * perPreview) / camera.fps * 10) / 10);
    $("countdown").textContent = tr("ui.countdown", { s: left.toFixed(1) });
  } else {
    $("countdown").textContent = state.busy ? tr("ui.capturing") : "";
  }
}

// -- fingers ----------------------------------------------------------------------------------
function renderFingers() {
  const view = state.session;
  const accept = (state.hello && state.hello.policy.nfiq2_accept) || 0;
  const hands = $("hands");
  hands.textContent = "";
  for (const hand of HANDS) {
    const group = document.createElement("div");
    group.className = "hand";
    for (const position of hand) {
      const inPolicy = view.finger_positions.includes(position);
      const finger = state.fingers[position] || { state: "waiting" };
      const button = document.createElement("button");
      button.type = "button";
      button.className = `finger ${finger.state} ${state.selected === position ? "selected" : ""}`;
      button.dataset.position = position;
      button.dataset.state = finger.state;
      button.disabled = !inPolicy || state.busy;
      button.setAttribute("aria-pressed", String(state.selected === position));
      const name = document.createElement("span");
      name.textContent = tr(`finger.${position}`);
      const score = document.createElement("span");
      score.className = "score";
      score.textContent = finger.nfiq2 !== undefined && finger.nfiq2 !== null ? String(finger.nfiq2) :
        finger.exception ? finger.exception : "";
      const label = document.createElement("span");
      label.className = "state";
      label.textContent = inPolicy ? fingerLabel(finger, accept) : "";
      button.append(name, score, label);
      button.onclick = () => { state.selected = position; renderSession(); focusFirst("#scan-button"); };
      group.appendChild(button);
    }
    hands.appendChild(group);
  }
  const selected = state.selected;
  $("finger-name").textContent = selected ? tr(`finger.${selected}`) : "";
  const finger = state.fingers[selected] || { state: "waiting" };
  $("finger-state").textContent = selected ? fingerLabel(finger, accept, true) : "";
  const progress = $("finger-progress");
  progress.hidden = finger.state !== "uploading";
  progress.value = finger.progress || 0;
  $("scan-button").disabled = state.busy || !selected;
  $("exception-button").disabled = state.busy || !selected;
}

function fingerLabel(finger, accept, long) {
  switch (finger.state) {
    case "scanning": return tr("finger_state.scanning");
    case "uploading": return tr("finger_state.uploading", { percent: Math.round((finger.progress || 0) * 100) });
    case "retry": {
      const advice = (finger.feedback || []).map((code) => tr(`feedback.${code}`, {}, "")).join(" ");
      return `${tr("finger_state.retry", { nfiq2: finger.nfiq2, accept, attempt: finger.attempt || 1 })} ${advice}`.trim();
    }
    case "captured": return long ? tr("finger_state.captured_long", { nfiq2: finger.nfiq2, accept }) : tr("finger_state.captured");
    case "forced": return tr("finger_state.forced", { nfiq2: finger.nfiq2, accept });
    case "exception": return tr(`exception.${finger.exception}`);
    default: return tr("finger_state.waiting");
  }
}

async function scanFinger() {
  const position = state.selected;
  if (!position) return;
  state.fingers[position] = { state: "scanning" };
  const result = await run("session.finger", { position }, {
    onError: () => { if (state.fingers[position] && ["scanning", "uploading", "retry"].includes(state.fingers[position].state)) delete state.fingers[position]; },
  });
  if (result) { state.reviewRetake = false; state.retake = null; }
  renderSession();
  focusMain();
}

async function markException() {
  const position = state.selected;
  if (!position) return;
  await run("session.exception", { position, reason: $("exception-reason").value });
  renderSession();
  focusMain();
}

function onDevice(message) {
  if (message.kind !== "fingerprint" || state.view !== "session") return;
  const position = message.body.position;
  if (!position || !state.busy) return;
  const finger = state.fingers[position] || {};
  if (message.event === "place_finger") state.fingers[position] = { ...finger, state: "scanning" };
  if (message.event === "progress") {
    state.fingers[position] = { ...finger, state: "uploading", progress: message.body.received / message.body.total };
  }
  if (message.event === "capture") state.feedback[position] = message.body.feedback || [];
  renderFingersIfShown();
}

function onEvent(topic, body) {
  state.events.push({ topic, body, at: new Date().toLocaleTimeString() });
  if (state.events.length > 200) state.events.shift();
  if (state.view === "engineer") renderEventLog();
  if (!state.session || body.session !== state.session.session) return;
  if (topic === "station.enrollment.finger.attempt") {
    const accept = state.hello.policy.nfiq2_accept;
    if (body.nfiq2 === null || body.nfiq2 < accept) {
      state.fingers[body.position] = { state: "retry", nfiq2: body.nfiq2 === null ? "–" : body.nfiq2, attempt: body.attempt,
        feedback: body.no_fingerprint ? ["uniform_image"] : state.feedback[body.position] || [] };
      renderFingersIfShown();
    }
  }
  if (["station.enrollment.session.expired", "station.enrollment.session.cancelled"].includes(topic) && !state.busy) {
    $("session-error").textContent = tr(`ui.session_${topic.split(".").pop()}`);
    startView();
  }
}

function renderFingersIfShown() {
  if (state.view === "session" && !$("panel-fingers").hidden) renderFingers();
}

// -- review and finish ------------------------------------------------------------------------
async function renderReview() {
  const view = state.session;
  const dl = $("review-applicant");
  dl.textContent = "";
  for (const [name, value] of Object.entries(state.applicant || {})) {
    const dt = document.createElement("dt");
    dt.textContent = tr(`field.${name}`);
    const dd = document.createElement("dd");
    dd.textContent = name === "sex" ? tr(`sex.${value}`) : value;
    dl.append(dt, dd);
  }
  const img = $("review-portrait");
  img.hidden = !view.portrait;
  if (view.portrait) img.src = `/api/sessions/${view.session}/portrait.jpg?t=${view.updated_ns}`;
  img.alt = tr("step.portrait");
  const exceptionPhoto = $("review-exception-photo");
  exceptionPhoto.hidden = !view.exception_photo;
  if (view.exception_photo) exceptionPhoto.src = `/api/sessions/${view.session}/exception-photo.jpg?t=${view.updated_ns}`;
  exceptionPhoto.alt = tr("step.exception_photo");
  const table = $("review-fingers");
  table.textContent = "";
  const accept = state.hello.policy.nfiq2_accept;
  for (const position of view.finger_positions) {
    const row = table.insertRow();
    row.insertCell().textContent = tr(`finger.${position}`);
    row.insertCell().textContent = fingerLabel(state.fingers[position] || { state: "waiting" }, accept, true);
  }
  $("finish-button").disabled = state.busy;
}

async function finish() {
  const result = await run("session.finish");
  if (!result || !result.record) return;
  state.session = null;
  show("done");
  $("done-text").textContent = tr("ui.done_text");
  $("done-record").textContent = tr("ui.record_id", { record: result.record });
  $("done-record").dataset.record = result.record;
  focusFirst("#next-button");
}

async function cancelSession() {
  if (!state.session || !window.confirm(tr("ui.confirm_cancel"))) return;
  if (state.busy) await command("session.abort", { session: state.session.session }).catch(() => null);
  try {
    await command("session.cancel", { session: state.session.session, reason: "cancelled by the operator" });
    startView();
  } catch (error) { $("session-error").textContent = errorText(error); }
}

// -- field engineer ---------------------------------------------------------------------------
async function engineerView() {
  show("engineer");
  openEngineerPreview();
  renderEngineer();
}

function openEngineerPreview() {
  // The face figures come with the preview frames; the engineer page watches them too.
  if (!state.preview) {
    const ws = new WebSocket(`ws://${location.host}/ws/preview`);
    ws.binaryType = "arraybuffer";
    state.preview = ws;
    ws.onmessage = (message) => {
      const view = new DataView(message.data);
      const length = view.getUint32(0);
      state.quality = JSON.parse(new TextDecoder().decode(new Uint8Array(message.data, 4, length))).quality;
      ws.send("ack");
      renderFaceChecks();
    };
  }
}

async function renderEngineer() {
  fillReloadChoices();
  renderEngineerDevices();
  renderEventLog();
  try { $("engineer-uplink").textContent = JSON.stringify((await command("uplink.state")).status, null, 1); }
  catch (error) { $("engineer-uplink").textContent = errorText(error); }
}

async function renderEngineerDevices() {
  const box = $("engineer-devices");
  for (const name of Object.keys((state.status && state.status.drivers) || {})) {
    let pre = box.querySelector(`pre[data-driver="${name}"]`);
    if (!pre) { pre = document.createElement("pre"); pre.dataset.driver = name; box.appendChild(pre); }
    try {
      const snap = await command("driver.state", { driver: name });
      pre.textContent = `${name}: ${snap.state} ${snap.detail || ""}\n` + JSON.stringify({ status: snap.status, config: snap.config }, null, 1);
    } catch (error) { pre.textContent = `${name}: ${errorText(error)}`; }
  }
}

function renderFaceChecks() {
  const table = $("face-checks");
  const quality = state.quality;
  if (!quality || !quality.checks) return;
  table.textContent = "";
  for (const [name, check] of Object.entries(quality.checks)) {
    const row = table.insertRow();
    row.className = check.passed ? "" : "bad";
    row.insertCell().textContent = name;
    row.insertCell().textContent = check.value === null ? "–" : String(check.value);
    row.insertCell().textContent = [check.min !== undefined ? `≥ ${check.min}` : "", check.max !== undefined ? `≤ ${check.max}` : ""].join(" ");
  }
}

function renderEventLog() {
  const list = $("event-log");
  list.textContent = "";
  for (const event of state.events.slice().reverse()) {
    const li = document.createElement("li");
    li.textContent = `${event.at} ${event.topic} ${JSON.stringify(event.body)}`;
    list.appendChild(li);
  }
}

function fillReloadChoices() {
  const select = $("reload-daemon");
  if (select.options.length) return;
  const names = ["controller", "uplink", "console", ...Object.keys((state.status && state.status.drivers) || {})];
  for (const name of names) {
    const option = document.createElement("option");
    option.value = option.textContent = name;
    select.appendChild(option);
  }
}

async function reloadDaemon() {
  const daemon = $("reload-daemon").value;
  try {
    const result = await command("daemon.reload", { daemon });
    $("config-result").textContent = result.applied ? tr("ui.reload_applied", { daemon }) :
      `${tr("ui.reload_rejected", { daemon })}\n${result.problems.join("\n")}`;
  } catch (error) { $("config-result").textContent = errorText(error); }
}

async function configCheck() {
  try {
    const result = await command("config.check");
    $("config-result").textContent = result.valid ? tr("ui.config_valid") : result.problems.join("\n");
  } catch (error) { $("config-result").textContent = errorText(error); }
}

// -- wiring -----------------------------------------------------------------------------------
function noteActivity() {
  const now = Date.now();
  if (now - state.lastActivity < ACTIVITY_EVERY_MS || !state.ws || state.ws.readyState !== WebSocket.OPEN) return;
  state.lastActivity = now;
  state.ws.send(JSON.stringify({ type: "activity" }));
}

async function boot() {
  await Promise.all([loadCatalog("vi"), loadCatalog("en")]);
  translatePage();
  $("sign-in-form").addEventListener("submit", signIn);
  $("applicant-form").addEventListener("submit", startSession);
  $("capture-button").addEventListener("click", capturePhoto);
  $("abort-button").addEventListener("click", () => command("session.abort", { session: state.session.session }).catch(() => null));
  $("scan-button").addEventListener("click", scanFinger);
  $("exception-button").addEventListener("click", markException);
  $("finish-button").addEventListener("click", finish);
  $("retake-portrait").addEventListener("click", () => { state.retake = "portrait"; renderSession(); focusMain(); });
  $("retake-fingers").addEventListener("click", () => { state.retake = "fingers"; state.reviewRetake = true; state.selected = state.session.finger_positions[0]; renderSession(); focusMain(); });
  $("cancel-button").addEventListener("click", cancelSession);
  $("next-button").addEventListener("click", startView);
  $("sign-out").addEventListener("click", signOut);
  $("engineer-tab").addEventListener("click", engineerView);
  $("engineer-back").addEventListener("click", () => { closePreview(); state.session ? (show("session"), renderSession()) : startView(); });
  $("config-check").addEventListener("click", configCheck);
  $("reload-button").addEventListener("click", reloadDaemon);
  $("language").addEventListener("click", () => setLanguage(state.language === "vi" ? "en" : "vi"));
  for (const type of ["keydown", "pointerdown"]) document.addEventListener(type, noteActivity, { passive: true });
  const response = await fetch("/api/me");
  if (response.ok) await signedIn(await response.json());
  else { show("sign-in"); focusFirst("#sign-in-user"); }
}

document.addEventListener("DOMContentLoaded", boot);

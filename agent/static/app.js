// streamagent's live camera page: the OpenAI Realtime protocol over a websocket, no build step.
"use strict";

const $ = (id) => document.getElementById(id);
const RATES = [8000, 11025, 12000, 16000, 22050, 24000, 32000, 44100, 48000];
const MAX_RESPONSES = 200;
const MAX_ERRORS = 20;
const state = {
  running: false, ws: null, stream: null, audio: null, frameTimer: null, reconnectTimer: null,
  retry: 0, handlers: null, available: [], responses: new Map(),
  watches: [], pendingWatches: null, beeper: null, speaker: new Speaker(),
};

function setStatus(kind, text) {
  const el = $("status");
  el.dataset.state = kind;
  el.textContent = text;
}

function send(event) {
  if (state.ws && state.ws.readyState === WebSocket.OPEN) state.ws.send(JSON.stringify(event));
}

function clock(ms) {
  const s = Number(ms) / 1000;
  return `${String(Math.floor(s / 60)).padStart(2, "0")}:${(s % 60).toFixed(1).padStart(4, "0")}`;
}

// ---- media ---------------------------------------------------------------------------------

async function openMedia() {
  if (!navigator.mediaDevices || !navigator.mediaDevices.getUserMedia) {
    const err = new Error("insecure origin");
    err.name = "InsecureOrigin";
    throw err;
  }
  const cam = $("camera-select").value, mic = $("mic-select").value;
  const video = cam ? { deviceId: { exact: cam } } : { width: 640, height: 480 };
  // Answers in text play nothing, so there is no echo to cancel: give the speech models the
  // microphone as it is. Spoken answers would be heard back as the user: cancel their echo.
  const raw = { channelCount: 1, echoCancellation: $("speak").checked, noiseSuppression: false,
                autoGainControl: false };
  const audio = mic ? { ...raw, deviceId: { exact: mic } } : raw;
  let stream;
  try {
    stream = await navigator.mediaDevices.getUserMedia({ video, audio });
  } catch (err) {
    if (err.name !== "NotFoundError" && err.name !== "OverconstrainedError") throw err;
    // One of the two is missing: go on with whichever exists.
    stream = await navigator.mediaDevices.getUserMedia({ video }).catch(
      () => navigator.mediaDevices.getUserMedia({ audio }));
  }
  state.stream = stream;
  $("preview").srcObject = stream;
  await listDevices();
  if (stream.getAudioTracks().length) await startAudio(stream);
}

function mediaError(err) {
  if (err.name === "NotAllowedError" || err.name === "SecurityError") {
    setStatus("denied", "Camera/microphone permission denied. Allow access for this site, then press Start.");
  } else if (err.name === "NotFoundError" || err.name === "OverconstrainedError") {
    setStatus("nodevice", "No camera or microphone found. Connect one, then press Start.");
  } else if (err.name === "InsecureOrigin") {
    setStatus("insecure", "Browsers allow cameras only on https:// or http://localhost. See docs/camera-page.md.");
  } else {
    setStatus("error", `Cannot open the camera or microphone: ${err.message || err.name}`);
  }
}

async function listDevices() {
  const devices = await navigator.mediaDevices.enumerateDevices();
  for (const [id, kind] of [["camera-select", "videoinput"], ["mic-select", "audioinput"]]) {
    const select = $(id), chosen = select.value;
    select.replaceChildren(new Option("default", ""));
    devices.filter((d) => d.kind === kind).forEach((d, i) =>
      select.add(new Option(d.label || `${kind} ${i + 1}`, d.deviceId)));
    select.value = chosen;
  }
}

async function startAudio(stream) {
  let ctx = new AudioContext();
  if (!RATES.includes(ctx.sampleRate)) {
    await ctx.close();
    ctx = new AudioContext({ sampleRate: 48000 });
  }
  await ctx.audioWorklet.addModule("pcm-worklet.js");
  const source = ctx.createMediaStreamSource(stream);
  const node = new AudioWorkletNode(ctx, "pcm-capture");
  const mute = ctx.createGain();
  mute.gain.value = 0;
  source.connect(node).connect(mute).connect(ctx.destination);
  node.port.onmessage = (msg) => {
    if (!state.ws || state.ws.readyState !== WebSocket.OPEN) return;
    send({ type: "input_audio_buffer.append", audio: base64(new Uint8Array(msg.data)) });
  };
  state.audio = ctx;
}

function base64(bytes) {
  let s = "";
  for (let i = 0; i < bytes.length; i += 0x8000) {
    s += String.fromCharCode.apply(null, bytes.subarray(i, i + 0x8000));
  }
  return btoa(s);
}

function startFrames() {
  stopFrames();
  const fps = Math.min(30, Math.max(0.2, Number($("fps").value) || 2));
  state.frameTimer = setInterval(sendFrame, 1000 / fps);
}

function stopFrames() {
  clearInterval(state.frameTimer);
  state.frameTimer = null;
}

function sendFrame() {
  const video = $("preview"), canvas = $("canvas");
  if (!video.videoWidth || !state.ws || state.ws.readyState !== WebSocket.OPEN) return;
  if (state.ws.bufferedAmount > 1 << 20) return;  // the link is behind: skip (latest wins)
  const scale = Math.min(1, 640 / video.videoWidth);
  canvas.width = Math.round(video.videoWidth * scale);
  canvas.height = Math.round(video.videoHeight * scale);
  canvas.getContext("2d").drawImage(video, 0, 0, canvas.width, canvas.height);
  const url = canvas.toDataURL("image/jpeg", 0.8);
  send({ type: "conversation.item.create", item: { type: "message", role: "user",
         content: [{ type: "input_image", image_url: url }] } });
}

// ---- the session ---------------------------------------------------------------------------

function wsUrl() {
  const proto = location.protocol === "https:" ? "wss" : "ws";
  const model = new URLSearchParams(location.search).get("model") || "default";
  return `${proto}://${location.host}/v1/realtime?model=${encodeURIComponent(model)}`;
}

function connect() {
  setStatus(state.retry ? "reconnecting" : "connecting", state.retry ? "Reconnecting…" : "Connecting…");
  const key = $("api-key").value.trim();
  const ws = new WebSocket(wsUrl(), key ? ["realtime", `openai-insecure-api-key.${key}`] : []);
  state.ws = ws;
  ws.onopen = () => {
    state.retry = 0;
    updateSession();
    setStatus("live", "Live");
    $("ask").disabled = false;
    $("watch-add").disabled = false;
    startFrames();
  };
  ws.onmessage = (msg) => onEvent(JSON.parse(msg.data));
  ws.onclose = (ev) => {
    if (state.ws !== ws) return;
    stopFrames();
    $("ask").disabled = true;
    $("watch-add").disabled = true;
    if (!state.running) return;
    if (ev.code === 1008) {
      setStatus("error", `The server refused the session: ${ev.reason || "policy"}`);
      return;
    }
    const delay = Math.min(10000, 500 * 2 ** state.retry++);
    setStatus("reconnecting", `Connection lost; reconnecting in ${(delay / 1000).toFixed(1)} s…`);
    state.reconnectTimer = setTimeout(connect, delay);
  };
}

function updateSession() {
  const rate = state.audio ? state.audio.sampleRate : 24000;
  const streamagent = { live: true, sample_fps: 1 };
  if (state.handlers) streamagent.handlers = state.handlers;
  streamagent.watches = state.pendingWatches || state.watches;
  // Spoken answers make it a conversation: the server hears where each turn of the user ends,
  // transcribes it and answers it aloud. Otherwise both are off (null), as they are by default.
  const speak = $("speak").checked;
  const turns = speak ? { type: "server_vad", create_response: true } : null;
  const audio = { input: { format: { type: "audio/pcm", rate },
                           transcription: speak ? { model: "asr" } : null, turn_detection: turns } };
  if (speak) audio.output = { format: { type: "audio/pcm", rate: 24000 } };
  send({ type: "session.update", session: { type: "realtime", instructions: $("instructions").value,
         output_modalities: [speak ? "audio" : "text"], audio, streamagent } });
}

function speakChanged() {
  if ($("speak").checked) state.speaker.wake();  // on the click: browsers allow sound then
  else state.speaker.stop();
  const track = state.stream && state.stream.getAudioTracks()[0];
  // best effort: browsers that cannot switch echo cancellation on a live track use it from
  // the next Start
  if (track) track.applyConstraints({ echoCancellation: $("speak").checked }).catch(() => {});
  updateSession();
}

function onEvent(ev) {
  switch (ev.type) {
    case "session.created":
      showHandlers(ev.session.streamagent);
      break;
    case "session.updated":
      showHandlers(ev.session.streamagent);
      watchesTaken(ev.session.streamagent);
      break;
    case "response.created": addResponse(ev.response); break;
    case "response.output_item.added": {
      const el = state.responses.get(ev.response_id);
      if (el && ev.item.type === "message") el.dataset.itemId = ev.item.id;
      break;
    }
    case "response.output_text.delta":
    case "response.output_audio_transcript.delta": {  // the words of a spoken answer
      const el = state.responses.get(ev.response_id);
      if (el) el.querySelector(".text").textContent += ev.delta;
      break;
    }
    case "response.output_audio.delta": state.speaker.play(ev.item_id, ev.delta); break;
    case "response.output_audio.done": state.speaker.done(ev.item_id); break;
    case "response.done": responseDone(ev.response); break;
    case "input_audio_buffer.speech_started": bargeIn(); break;
    case "conversation.item.input_audio_transcription.completed": addUserTurn(ev); break;
    case "conversation.item.input_audio_transcription.failed": addError(ev.error); break;
    case "error": {
      const param = ev.error.param || "";
      // a refused session.update changed nothing: a watch being added or removed is not
      if (state.pendingWatches && param.startsWith("session.")) state.pendingWatches = null;
      addError(ev.error);
      if ($("speak").checked && /^session\.(output_modalities|audio\.output)/.test(param)) {
        $("speak").checked = false;  // e.g. a server without a voice: go on in text
        updateSession();
      }
      break;
    }
    default: break;
  }
}

function addEntry(source, text = "") {
  const li = document.createElement("li");
  const label = Object.assign(document.createElement("span"), { className: "label",
    textContent: `${source} · ${new Date().toLocaleTimeString()}` });
  li.append(label, Object.assign(document.createElement("span"), { className: "text",
                                                                   textContent: text }));
  const list = $("responses");
  list.prepend(li);
  while (list.children.length > MAX_RESPONSES) list.lastElementChild.remove();
  return li;
}

function addResponse(response) {
  const meta = response.metadata || {};
  const span = meta.window_start_ms ? ` · ${clock(meta.window_start_ms)}–${clock(meta.window_end_ms)}` : "";
  const source = meta.streamagent_watch ? `watch ${meta.streamagent_watch}` : meta.handler || "response";
  const li = addEntry(`${source}${span}`);
  li.dataset.responseId = response.id;
  li.dataset.handler = meta.handler || "";
  li.dataset.status = "in_progress";
  if (meta.streamagent_watch) {  // a watch fired: it stands out from what the handlers say
    li.classList.add("firing");
    li.dataset.watch = meta.streamagent_watch;
  }
  // Live responses (they count windows_skipped) and firings stay out of the conversation;
  // answers to the user join it, so one cut short by the user is truncated there.
  li.dataset.answer = String(!("windows_skipped" in meta) && !meta.streamagent_watch);
  state.responses.set(response.id, li);
}

function responseDone(response) {
  const el = state.responses.get(response.id);
  state.responses.delete(response.id);
  if (response.status === "cancelled") {  // no more of it is heard
    (response.output || []).forEach((item) => state.speaker.drop(item.id));
    if (el && el.dataset.itemId) state.speaker.drop(el.dataset.itemId);
  }
  if (!el) return;
  el.dataset.status = response.status;
  if (el.dataset.watch) alertFiring(el);
  if (el.dataset.heardMs) truncate(el);  // the user spoke over it while it was still coming
}

function addUserTurn(ev) {
  if (!(ev.transcript || "").trim()) return;
  const li = addEntry("you", `You: ${ev.transcript.trim()}`);
  li.classList.add("user");
  li.dataset.role = "user";
  li.dataset.itemId = ev.item_id;
}

function bargeIn() {
  // The user started to speak: stop the answers at once, and tell the server how much of each
  // was heard, so that the conversation holds what the user really heard.
  for (const [item, ms] of state.speaker.stop()) {
    const el = [...$("responses").children].find((li) => li.dataset.itemId === item);
    if (!el || el.dataset.answer !== "true") continue;
    el.dataset.heardMs = ms;
    if (el.dataset.status !== "in_progress") truncate(el);  // else once it has ended
  }
}

function truncate(el) {
  // an answer that said nothing is not in the conversation
  if (el.querySelector(".text").textContent) {
    send({ type: "conversation.item.truncate", item_id: el.dataset.itemId, content_index: 0,
           audio_end_ms: Number(el.dataset.heardMs) });
  }
  delete el.dataset.heardMs;
}

function addError(error) {
  const li = document.createElement("li");
  li.textContent = `${error.code}: ${error.message}`;
  const list = $("errors");
  list.prepend(li);
  while (list.children.length > MAX_ERRORS) list.lastElementChild.remove();
}

function showHandlers(ext) {
  if (!ext) return;
  state.available = ext.available_handlers || state.available;
  const box = $("handlers");
  box.replaceChildren(Object.assign(document.createElement("legend"), { textContent: "Handlers" }));
  for (const name of state.available) {
    const input = Object.assign(document.createElement("input"), {
      type: "checkbox", value: name, checked: ext.handlers.includes(name) });
    input.onchange = () => {
      state.handlers = [...box.querySelectorAll("input:checked")].map((i) => i.value);
      updateSession();
    };
    const label = document.createElement("label");
    label.append(input, ` ${name}`);
    box.append(label);
  }
}

// ---- watches -------------------------------------------------------------------------------

const PLACEHOLDERS = { text_contains: "EXIT", speech_contains: "help me",
                       condition: "A parcel lies on the doormat." };
const ID_PREFIXES = { text_contains: "text", speech_contains: "speech", condition: "condition" };

function watchSpec(kind, text) {
  if (kind.startsWith("face:")) return { id: kind, face: kind.slice(5) };
  if (!text) return null;
  return { id: `${ID_PREFIXES[kind]}:${text}`.slice(0, 64), [kind]: text };
}

function changeWatches(watches) {
  // sent with the rest of the session; listed once the server has taken them
  state.pendingWatches = watches;
  updateSession();
}

function watchesTaken(ext) {
  if (state.pendingWatches) {
    const ids = new Set(((ext && ext.watches) || []).map((w) => w.id));
    state.watches = state.pendingWatches.filter((w) => ids.has(w.id));
    state.pendingWatches = null;
  }
  showWatches();
}

function showWatches() {
  const list = $("watches");
  list.replaceChildren();
  for (const watch of state.watches) {
    const li = document.createElement("li");
    li.dataset.watch = watch.id;
    const remove = Object.assign(document.createElement("button"), {
      type: "button", textContent: "×", title: `stop watching for ${watch.id}` });
    remove.onclick = () => changeWatches(state.watches.filter((w) => w.id !== watch.id));
    li.append(Object.assign(document.createElement("span"), { textContent: watch.id }), remove);
    list.append(li);
  }
}

function alertFiring(li) {
  // a sound and a notification, when the user asked for them (and the browser allows them)
  if (!$("watch-alert").checked) return;
  const done = [];
  if (state.beeper && state.beeper.state === "running") {
    const ctx = state.beeper, tone = ctx.createOscillator(), gain = ctx.createGain();
    tone.frequency.value = 880;
    gain.gain.setValueAtTime(0.2, ctx.currentTime);
    gain.gain.exponentialRampToValueAtTime(0.001, ctx.currentTime + 0.4);
    tone.connect(gain).connect(ctx.destination);
    tone.start();
    tone.stop(ctx.currentTime + 0.4);
    done.push("sound");
  }
  if ("Notification" in window && Notification.permission === "granted") {
    new Notification("streamagent", { body: li.querySelector(".text").textContent,
                                      tag: li.dataset.watch });
    done.push("notification");
  }
  li.dataset.alert = done.join(" ");
}

async function alertsWanted() {
  if (!$("watch-alert").checked) return;
  state.beeper = state.beeper || new AudioContext();  // made on the click: browsers allow it
  await state.beeper.resume();
  if ("Notification" in window && Notification.permission === "default") {
    await Notification.requestPermission();
  }
}

function watchKindChanged() {
  const kind = $("watch-kind").value;
  $("watch-text").hidden = kind.startsWith("face:");
  $("watch-text").placeholder = PLACEHOLDERS[kind] || "";
}

// ---- controls ------------------------------------------------------------------------------

async function start() {
  $("start").disabled = true;
  if ($("speak").checked) state.speaker.wake();  // on the click: browsers allow sound then
  state.running = true;
  setStatus("connecting", "Opening the camera…");
  try {
    await openMedia();
  } catch (err) {
    state.running = false;
    $("start").disabled = false;
    mediaError(err);
    return;
  }
  $("stop").disabled = false;
  connect();
}

function stop() {
  state.running = false;
  clearTimeout(state.reconnectTimer);
  stopFrames();
  if (state.ws) state.ws.close(1000);
  state.ws = null;
  if (state.stream) state.stream.getTracks().forEach((t) => t.stop());
  if (state.audio) state.audio.close();
  state.stream = state.audio = null;
  state.speaker.stop();
  $("start").disabled = false;
  $("stop").disabled = true;
  $("ask").disabled = true;
  $("watch-add").disabled = true;
  setStatus("idle", "Stopped");
}

$("start").onclick = start;
$("stop").onclick = stop;
$("fps").onchange = () => { if (state.frameTimer) startFrames(); };
$("instructions").onchange = updateSession;
$("speak").onchange = speakChanged;
for (const id of ["camera-select", "mic-select"]) {
  $(id).onchange = async () => { if (state.running) { stop(); await start(); } };
}
$("ask-form").onsubmit = (e) => {
  e.preventDefault();
  const q = $("question").value.trim();
  send({ type: "conversation.item.create", item: { type: "message", role: "user",
         content: [{ type: "input_text", text: q || "What do you see and hear?" }] } });
  send({ type: "response.create" });
  $("question").value = "";
};
$("watch-kind").onchange = watchKindChanged;
$("watch-alert").onchange = alertsWanted;
$("watch-form").onsubmit = (e) => {
  e.preventDefault();
  const watch = watchSpec($("watch-kind").value, $("watch-text").value.trim());
  if (!watch) { $("watch-text").focus(); return; }
  changeWatches([...state.watches.filter((w) => w.id !== watch.id), watch]);
  $("watch-text").value = "";
};
if (new URLSearchParams(location.search).has("autostart")) start();

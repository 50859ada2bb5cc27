// edge-infer's drawing page: draw on the canvas (pointer events: mouse, touch, pen, or the keyboard), send
// it as a PNG to POST /v1/digits or /v1/numbers, and show the answer, the probabilities and what the model saw.
"use strict";

const pad = document.getElementById("pad");
const ctx = pad.getContext("2d");
const answer = document.getElementById("answer");
const statusLine = document.getElementById("status");
const errorLine = document.getElementById("error");
const bars = document.getElementById("bars");
const digitList = document.getElementById("digits");
const inputFigure = document.getElementById("input-figure");
const modelInput = document.getElementById("model-input");
const threshold = document.getElementById("min-confidence");
const tokenBox = document.getElementById("token-box");
const tokenField = document.getElementById("token");
const SIZES = { digits: [280, 280], numbers: [600, 200] };
const READ_DELAY_MS = 350; // after the last stroke ends, read what is drawn

let mode = "digits";
let inked = false;
let strokes = 0; // strokes in progress (one per pointer: several fingers may draw at once)
let readTimer = null;
let requestCount = 0;
const last = new Map(); // pointerId -> the last point drawn
const keyPen = { x: 140, y: 140, down: false };

function clear() {
  ctx.fillStyle = "#fff";
  ctx.fillRect(0, 0, pad.width, pad.height);
  ctx.lineCap = ctx.lineJoin = "round";
  ctx.strokeStyle = "#111";
  ctx.lineWidth = Math.max(6, Math.round(pad.height / 14));
  inked = false;
  keyPen.x = pad.width / 2;
  keyPen.y = pad.height / 2;
  keyPen.down = false;
  answer.textContent = "–";
  statusLine.textContent = "";
  statusLine.className = "status";
  errorLine.textContent = "";
  bars.replaceChildren();
  digitList.replaceChildren();
  inputFigure.hidden = true;
}

function setMode(next) {
  mode = next;
  [pad.width, pad.height] = SIZES[mode];
  digitList.hidden = mode !== "numbers";
  bars.hidden = mode !== "digits";
  clear();
}

function point(event) {
  const box = pad.getBoundingClientRect();
  return { x: ((event.clientX - box.left) * pad.width) / box.width, y: ((event.clientY - box.top) * pad.height) / box.height };
}

function line(from, to) {
  ctx.beginPath();
  ctx.moveTo(from.x, from.y);
  ctx.lineTo(to.x, to.y);
  ctx.stroke();
  inked = true;
}

pad.addEventListener("pointerdown", (event) => {
  event.preventDefault();
  pad.setPointerCapture(event.pointerId);
  const p = point(event);
  last.set(event.pointerId, p);
  line(p, p); // a dot for a tap
  strokes += 1;
  clearTimeout(readTimer);
});

pad.addEventListener("pointermove", (event) => {
  if (!last.has(event.pointerId)) return;
  const events = event.getCoalescedEvents ? event.getCoalescedEvents() : [event];
  for (const e of events.length ? events : [event]) {
    const p = point(e);
    line(last.get(event.pointerId), p);
    last.set(event.pointerId, p);
  }
});

function endStroke(event) {
  if (!last.delete(event.pointerId)) return;
  strokes = Math.max(0, strokes - 1);
  if (strokes === 0) {
    clearTimeout(readTimer);
    readTimer = setTimeout(readCanvas, READ_DELAY_MS);
  }
}
pad.addEventListener("pointerup", endStroke);
pad.addEventListener("pointercancel", endStroke);

// The keyboard: a pen moved by the arrow keys, lowered and lifted with Space.
pad.addEventListener("keydown", (event) => {
  const step = event.shiftKey ? 4 : 14;
  const moves = { ArrowLeft: [-step, 0], ArrowRight: [step, 0], ArrowUp: [0, -step], ArrowDown: [0, step] };
  if (event.key in moves) {
    const [dx, dy] = moves[event.key];
    const from = { x: keyPen.x, y: keyPen.y };
    keyPen.x = Math.min(pad.width, Math.max(0, keyPen.x + dx));
    keyPen.y = Math.min(pad.height, Math.max(0, keyPen.y + dy));
    if (keyPen.down) line(from, keyPen);
    statusLine.textContent = `pen ${keyPen.down ? "down" : "up"} at ${Math.round(keyPen.x)}, ${Math.round(keyPen.y)}`;
  } else if (event.key === " ") {
    keyPen.down = !keyPen.down;
    if (keyPen.down) line(keyPen, keyPen);
    statusLine.textContent = `pen ${keyPen.down ? "down" : "up"}`;
  } else if (event.key === "Enter") {
    readCanvas();
  } else if (event.key === "Escape" || event.key === "Delete" || event.key === "Backspace") {
    clear();
  } else {
    return;
  }
  event.preventDefault();
});
document.addEventListener("keydown", (event) => {
  if (event.key === "Escape" && event.target !== pad) clear();
});

function percent(p) {
  return `${(100 * p).toFixed(1)}%`;
}

function showDigit(record) {
  bars.replaceChildren();
  if (record.no_digit) {
    answer.textContent = "–";
    statusLine.textContent = "no digit found";
    return;
  }
  const best = record.label ?? record.guess;
  answer.textContent = record.unsure ? "?" : String(record.label);
  answer.dataset.label = String(best);
  if (record.unsure) {
    statusLine.textContent = `not sure: perhaps ${record.guess} (${percent(record.confidence)})`;
    statusLine.className = "status unsure";
  } else {
    statusLine.textContent = `${percent(record.confidence)} sure`;
  }
  record.probabilities.forEach((p, digit) => {
    const row = document.createElement("li");
    row.className = digit === best ? "top" : "";
    row.setAttribute("aria-label", `${digit}: ${percent(p)}`);
    const label = document.createElement("span");
    label.textContent = String(digit);
    const bar = document.createElement("span");
    bar.className = "bar";
    bar.style.width = `${Math.max(0.5, 100 * p)}%`;
    const track = document.createElement("span");
    track.className = "track";
    track.append(bar);
    const value = document.createElement("span");
    value.className = "value";
    value.textContent = percent(p);
    row.append(label, track, value);
    bars.append(row);
  });
  if (record.input) {
    modelInput.src = `data:image/png;base64,${record.input}`;
    inputFigure.hidden = false;
  }
}

function showNumber(record) {
  digitList.replaceChildren();
  inputFigure.hidden = true;
  answer.textContent = record.number || "–";
  answer.dataset.label = record.number;
  const unsure = record.digits.filter((d) => d.label === null).length;
  if (!record.digits.length) {
    statusLine.textContent = "no digits found";
  } else if (unsure) {
    statusLine.textContent = `not sure of ${unsure} digit${unsure > 1 ? "s" : ""} (shown as ?)`;
    statusLine.className = "status unsure";
  } else {
    statusLine.textContent = `${record.digits.length} digits, ${percent(record.confidence)} sure of all`;
  }
  for (const digit of record.digits) {
    const item = document.createElement("li");
    item.className = digit.label === null ? "unsure" : "";
    const picture = document.createElement("img");
    picture.width = picture.height = 56;
    picture.alt = "what the model saw of this digit";
    if (digit.input) picture.src = `data:image/png;base64,${digit.input}`;
    const caption = document.createElement("div");
    caption.textContent = `${digit.label ?? "?"} · ${percent(digit.confidence)}`;
    item.append(picture, caption);
    digitList.append(item);
  }
}

async function send(body, contentType) {
  const query = new URLSearchParams({ input: "true", min_confidence: String(Number(threshold.value) || 0) });
  if (mode === "digits") query.set("top_k", "3");
  const headers = { "Content-Type": contentType };
  if (tokenField.value) headers.Authorization = `Bearer ${tokenField.value}`;
  errorLine.textContent = "";
  statusLine.className = "status";
  const sent = ++requestCount;
  let reply;
  try {
    const response = await fetch(`/v1/${mode}?${query}`, { method: "POST", body, headers });
    reply = await response.json();
    if (response.status === 401) {
      tokenBox.hidden = false;
      tokenField.focus();
    }
    if (!response.ok) throw new Error(reply.error || `HTTP ${response.status}`);
  } catch (error) {
    if (sent === requestCount) errorLine.textContent = String(error.message || error);
    return;
  }
  if (sent !== requestCount) return; // a newer drawing was sent meanwhile
  const record = reply.results[0];
  if (record.error) {
    errorLine.textContent = record.error;
  } else if (mode === "digits") {
    showDigit(record);
  } else {
    showNumber(record);
  }
  answer.dataset.answers = String(Number(answer.dataset.answers) + 1); // (the browser test waits on this)
}

function readCanvas() {
  clearTimeout(readTimer);
  if (!inked) {
    statusLine.textContent = mode === "digits" ? "draw a digit first" : "draw a number first";
    return;
  }
  pad.toBlob((blob) => send(blob, "image/png"), "image/png");
}

document.getElementById("read").addEventListener("click", readCanvas);
document.getElementById("clear").addEventListener("click", () => {
  clear();
  pad.focus();
});
document.getElementById("upload").addEventListener("change", (event) => {
  const file = event.target.files[0];
  if (file) send(file, file.type || "application/octet-stream");
  event.target.value = "";
});
for (const radio of document.querySelectorAll('input[name="mode"]')) {
  radio.addEventListener("change", () => setMode(radio.value));
}
setMode("digits");

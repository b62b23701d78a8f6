// The torch-vae explorer's page: plain JavaScript, no outside resources. Everything the page
// shows comes from the server's JSON API (see /docs); decoded images arrive as PNG data URLs.
"use strict";

const $ = (id) => document.getElementById(id);
const PALETTE = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd",
                 "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf"];
const state = {
  info: null, z: [], marker: null, upload: null, path: null, pathAt: null,
  frames: [], slots: { a: null, b: null }, view: null, base: null, cls: null,
};
// Read by the browser test: requests per queue in flight, the most ever at once, answers.
const stats = { inFlight: {}, maxInFlight: 0, answers: 0 };
window.explorerStats = stats;

function setStatus(text, error) {
  $("status").textContent = text;
  $("status").className = error ? "error" : "";
}

async function api(path, body) {
  let init = {};
  if (body instanceof FormData) init = { method: "POST", body };
  else if (body !== undefined) {
    init = { method: "POST", headers: { "Content-Type": "application/json" },
             body: JSON.stringify(body) };
  }
  const r = await fetch(path, init);
  const data = await r.json().catch(() => ({ detail: r.statusText }));
  if (!r.ok) throw new Error(`${r.status}: ${data.detail || r.statusText}`);
  return data;
}

// A queue that keeps at most one request in flight: a job queued while one runs replaces any
// job still waiting, so a dragged slider or map point always ends on its latest value.
function latest(name) {
  let busy = false, waiting = null;
  stats.inFlight[name] = 0;
  async function run(job) {
    busy = true;
    stats.inFlight[name] += 1;
    stats.maxInFlight = Math.max(stats.maxInFlight, stats.inFlight[name]);
    try { await job(); setStatus(""); } catch (e) { setStatus(e.message, true); }
    stats.inFlight[name] -= 1;
    stats.answers += 1;
    busy = false;
    if (waiting) { const next = waiting; waiting = null; run(next); }
  }
  return (job) => { if (busy) waiting = job; else run(job); };
}
const decodeQueue = latest("decode");
const interpQueue = latest("interpolate");

// ---- the class a conditional model decodes as -------------------------------------------
// Every request that decodes or encodes names it (the API refuses a class for any other model).
function withClass(body) {
  if (state.info.conditional) body.class = state.cls;
  return body;
}

function className() {
  return state.info.conditional ? ` · class ${state.info.classes[state.cls]}` : "";
}

function buildClassPicker(info) {
  if (!info.conditional) return;
  const select = $("class");
  info.classes.forEach((name, i) => {
    const option = document.createElement("option");
    option.value = String(i);
    option.textContent = name;
    select.appendChild(option);
  });
  state.cls = 0;
  $("class-row").hidden = false;
  select.addEventListener("change", () => {
    state.cls = Number(select.value);
    decodeZ("class changed");
    interpolate();
    if ($("upload").files.length) encodeUpload(false);
  });
}

// ---- decoded image and sliders -------------------------------------------------------
function show(d, source) {
  $("decoded").src = d.image;
  if (d.z) state.z = d.z.slice();
  state.marker = d.xy;
  if (source !== undefined) $("source").textContent = source + className();
  updateSliders();
  drawMap();
}

function decodeZ(source) {
  decodeQueue(async () => show(await api("api/decode", withClass({ z: state.z })), source));
}

function buildSliders(info) {
  const box = $("sliders");
  for (const dim of info.dims.slice(0, info.sliders)) {
    const row = document.createElement("label");
    row.className = "slider" + (dim.active ? "" : " inactive");
    row.innerHTML = `<span class="name">z${dim.index}</span>
      <input type="range" min="-4" max="4" step="0.01" value="0" data-dim="${dim.index}">
      <span class="value">0.00</span>
      <span class="kl">KL ${dim.kl.toFixed(3)} nats${dim.active ? "" : " (inactive)"}</span>`;
    const input = row.querySelector("input");
    input.addEventListener("input", () => {
      state.z[dim.index] = Number(input.value);
      row.querySelector(".value").textContent = Number(input.value).toFixed(2);
      decodeZ(`sliders: z${dim.index} = ${Number(input.value).toFixed(2)}`);
    });
    box.appendChild(row);
  }
}

function updateSliders() {
  for (const input of document.querySelectorAll("#sliders input")) {
    if (input === document.activeElement && input.matches(":active")) continue;
    const v = state.z[Number(input.dataset.dim)];
    input.value = v;
    input.parentElement.querySelector(".value").textContent = v.toFixed(2);
  }
}

// ---- the map ---------------------------------------------------------------------------
function colour(label) {
  if (label === null || label < 0) return "#888";
  if (label < PALETTE.length && state.info.classes && state.info.classes.length <= 10) {
    return PALETTE[label];
  }
  return `hsl(${(label * 137.508) % 360}, 65%, 48%)`;
}

function quantile(sorted, q) {
  return sorted[Math.min(sorted.length - 1, Math.max(0, Math.round(q * (sorted.length - 1))))];
}

function setView(data) {
  // The middle 99% of the points, with a margin; the same scale on both axes.
  const xs = data.x.slice().sort((a, b) => a - b), ys = data.y.slice().sort((a, b) => a - b);
  const x0 = quantile(xs, 0.005), x1 = quantile(xs, 0.995);
  const y0 = quantile(ys, 0.005), y1 = quantile(ys, 0.995);
  const span = Math.max(x1 - x0, y1 - y0, 1e-6) * 1.15;
  state.view = { cx: (x0 + x1) / 2, cy: (y0 + y1) / 2, span };
}

function toCanvas(x, y) {
  const c = $("map"), v = state.view;
  return [((x - v.cx) / v.span + 0.5) * c.width, (0.5 - (y - v.cy) / v.span) * c.height];
}

function toMap(px, py) {
  const c = $("map"), v = state.view;
  return [v.cx + (px / c.width - 0.5) * v.span, v.cy + (0.5 - py / c.height) * v.span];
}

function drawPoints(data) {
  const c = $("map"), base = document.createElement("canvas");
  base.width = c.width; base.height = c.height;
  const ctx = base.getContext("2d");
  ctx.globalAlpha = 0.55;
  const byColour = new Map();
  data.x.forEach((x, i) => {
    const col = colour(data.labels ? data.labels[i] : null);
    if (!byColour.has(col)) byColour.set(col, []);
    byColour.get(col).push(i);
  });
  for (const [col, idx] of byColour) {
    ctx.fillStyle = col;
    for (const i of idx) {
      const [px, py] = toCanvas(data.x[i], data.y[i]);
      ctx.fillRect(px - 1.2, py - 1.2, 2.4, 2.4);
    }
  }
  state.base = base;
}

function drawMarker(ctx, xy, shape) {
  const [px, py] = toCanvas(xy[0], xy[1]);
  ctx.beginPath();
  if (shape === "diamond") {
    ctx.moveTo(px, py - 8); ctx.lineTo(px + 8, py); ctx.lineTo(px, py + 8); ctx.lineTo(px - 8, py);
    ctx.closePath(); ctx.fillStyle = "#000"; ctx.fill();
  } else {
    ctx.arc(px, py, shape === "small" ? 4 : 7, 0, 2 * Math.PI);
    ctx.fillStyle = shape === "small" ? "#ff0" : "#fff"; ctx.fill();
    ctx.lineWidth = 2.5; ctx.strokeStyle = "#000"; ctx.stroke();
  }
}

function drawMap() {
  if (!state.base) return;
  const ctx = $("map").getContext("2d");
  ctx.clearRect(0, 0, ctx.canvas.width, ctx.canvas.height);
  ctx.drawImage(state.base, 0, 0);
  if (state.path) {
    ctx.beginPath();
    state.path.forEach(([x, y], i) => {
      const [px, py] = toCanvas(x, y);
      if (i) ctx.lineTo(px, py); else ctx.moveTo(px, py);
    });
    ctx.lineWidth = 2; ctx.strokeStyle = "rgba(0,0,0,0.7)"; ctx.stroke();
    if (state.pathAt) drawMarker(ctx, state.pathAt, "small");
  }
  if (state.upload) drawMarker(ctx, state.upload, "diamond");
  if (state.marker) drawMarker(ctx, state.marker, "circle");
}

function buildLegend(info, data) {
  const legend = $("legend");
  if (!info.classes || !data.labels) return;
  const present = new Set(data.labels);
  info.classes.forEach((name, i) => {
    if (!present.has(i)) return;
    const span = document.createElement("span");
    span.style.setProperty("--c", colour(i));
    span.textContent = name;
    legend.appendChild(span);
  });
}

function mapPointer() {
  const c = $("map");
  let dragging = false;
  const pick = (e) => {
    const r = c.getBoundingClientRect();
    const bound = state.info.z_bound;
    const xy = toMap((e.clientX - r.left) * c.width / r.width,
                     (e.clientY - r.top) * c.height / r.height)
      .map((v) => Math.max(-bound, Math.min(bound, v)));
    state.marker = xy;
    drawMap();
    decodeQueue(async () => show(await api("api/map/decode", withClass({ xy })),
                                 `map: (${xy[0].toFixed(2)}, ${xy[1].toFixed(2)})`));
  };
  c.addEventListener("pointerdown", (e) => { dragging = true; c.setPointerCapture(e.pointerId); pick(e); });
  c.addEventListener("pointermove", (e) => { if (dragging) pick(e); });
  c.addEventListener("pointerup", () => { dragging = false; });
  c.addEventListener("pointercancel", () => { dragging = false; });
}

// ---- uploads and interpolation ---------------------------------------------------------
function fileForm(input) {
  const form = new FormData();
  form.append("file", input.files[0]);
  if (state.info.conditional) form.append("class", String(state.cls));
  return form;
}

// Encode the uploaded file (a conditional model's as the picked class) into its panel; shown
// as the decoded image too when it was just chosen (a class change only redraws the panel).
async function encodeUpload(showIt) {
  try {
    const d = await api("api/encode", fileForm($("upload")));
    $("upload-input").src = d.input;
    $("upload-recon").src = d.image;
    state.upload = d.xy;
    if (showIt) decodeQueue(async () => show(d, `your image: ${$("upload").files[0].name}`));
    else drawMap();
  } catch (e) { setStatus(e.message, true); }
}

function uploadPanel() {
  $("upload").addEventListener("change", () => {
    if ($("upload").files.length) encodeUpload(true);
  });
}

function setSlot(name, d) {
  state.slots[name] = d.z;
  $(`${name}-thumb`).src = d.input;
  interpolate();
}

function interpolate() {
  const { a, b } = state.slots;
  if (!a || !b) return;
  interpQueue(async () => {
    const steps = Number($("scrub").max) + 1;
    const d = await api("api/interpolate", withClass({ a, b, steps, method: $("method").value }));
    state.frames = d.frames;
    state.path = d.xy;
    scrub();
  });
}

function scrub() {
  const i = Number($("scrub").value);
  if (!state.frames.length) return;
  $("frame").src = state.frames[i];
  state.pathAt = state.path[i];
  drawMap();
}

function interpPanel() {
  for (const name of ["a", "b"]) {
    const index = $(`${name}-index`);
    index.max = state.info.images - 1;
    const pick = async () => {
      try { setSlot(name, await api(`api/images/${Number(index.value)}`)); }
      catch (e) { setStatus(e.message, true); }
    };
    $(`${name}-pick`).addEventListener("click", pick);
    index.addEventListener("change", pick);
    $(`${name}-file`).addEventListener("change", async () => {
      if (!$(`${name}-file`).files.length) return;
      try { setSlot(name, await api("api/encode", fileForm($(`${name}-file`)))); }
      catch (e) { setStatus(e.message, true); }
    });
    pick();
  }
  $("method").addEventListener("change", interpolate);
  $("scrub").addEventListener("input", scrub);
}

// ---- start -----------------------------------------------------------------------------
async function start() {
  const info = await api("api/info");
  state.info = info;
  state.z = new Array(info.latent_dims).fill(0);
  $("about").textContent = `${info.model} · ${info.dataset} · latent ${info.latent_dims}` +
    ` · ${info.images} test images · samples: ${info.sampler}` +
    (info.conditional ? ` · conditional on ${info.classes.length} classes` : "");
  $("map-kind").textContent = info.map === "code" ? "(the code itself)"
    : "(the plane of the codes' two principal directions)";
  buildClassPicker(info);
  buildSliders(info);
  const data = await api("api/map");
  setView(data);
  drawPoints(data);
  buildLegend(info, data);
  mapPointer();
  uploadPanel();
  interpPanel();
  $("sample").addEventListener("click", () => decodeQueue(
    async () => show(await api("api/sample", withClass({})), "a random sample")));
  $("origin").addEventListener("click", () => {
    state.z = new Array(info.latent_dims).fill(0);
    decodeZ("z = 0");
  });
  decodeZ("z = 0");
  document.body.dataset.ready = "1";
}

start().catch((e) => setStatus(`cannot start: ${e.message}`, true));

// The torch-vae explorer's page: plain JavaScript, no outside resources. Everything the page
// shows comes from the server's JSON API (see /openapi.json); decoded images arrive as PNG data
// URLs. A Gaussian model's code is edited with sliders, a discrete (VQ) model's, a grid of
// code indices, cell by cell.
"use strict";

const $ = (id) => document.getElementById(id);
const PALETTE = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd",
                 "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf"];
const state = {
  info: null, z: [], marker: null, upload: null, path: null, pathAt: null,
  frames: [], slots: { a: null, b: null }, slotNames: { a: "", b: "" }, view: null, base: null,
  cls: null, discrete: false, usage: [], cell: 0, frameCodes: [],
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
  let r;
  try { r = await fetch(path, init); }
  catch (e) {  // no answer at all ("Failed to fetch"): the server is gone
    throw new Error("cannot reach the explorer's server: is torch-vae explore still running?");
  }
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
  if (d.usage) state.usage = d.usage;
  state.marker = d.xy;
  if (source !== undefined) $("source").textContent = source + className();
  updateSliders();
  updateGrid();
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

// ---- a discrete model's code grid ------------------------------------------------------
// h x w cells, each showing its code index and shaded by how many test images have that code
// there; a selected cell's code is typed, stepped or drawn at random, and the grid decoded.
function cellName(i) {
  const w = state.info.grid[1];
  return `row ${Math.floor(i / w)}, column ${i % w}`;
}

// How many of the test images a share u of them is: "13 of the 10000 test images (0.1%)".
function share(u) {
  const n = state.info.images, pct = u >= 0.1 ? Math.round(u * 100) : (u * 100).toFixed(1);
  return `${Math.round(u * n)} of the ${n} test images (${pct}%)`;
}

function buildGrid(info) {
  const [h, w] = info.grid, k = info.codebook_size;
  $("latent-title").textContent = `Code grid (${h}x${w} codes of ${k})`;
  $("latent-note").textContent = "Click a cell, then type its code, step it (\u2212 + or the " +
    "keys - +) or draw a random one; the arrow keys move. Shade: how many test images have " +
    "that code there (darker: more; red border: none).";
  $("sliders").hidden = true;
  const box = $("grid");
  const size = Math.max(12, Math.min(40, Math.floor(318 / w) - 2));
  box.style.gridTemplateColumns = `repeat(${w}, ${size}px)`;
  box.style.gridAutoRows = `${size}px`;
  box.style.fontSize = `${Math.max(7, Math.min(13, size / 3))}px`;
  box.classList.toggle("small", size < 18 || (k > 1000 && size < 30));  // too small for text
  for (let i = 0; i < h * w; i++) {
    const cell = document.createElement("button");
    cell.type = "button";
    cell.className = "cell";
    cell.dataset.cell = String(i);
    cell.addEventListener("click", () => selectCell(i));
    cell.addEventListener("keydown", (e) => cellKey(e, i));
    box.appendChild(cell);
  }
  const input = $("cell-code");
  input.max = String(k - 1);
  const typed = () => {
    const v = input.value.trim() === "" ? NaN : Number(input.value);
    return Number.isInteger(v) && v >= 0 && v < k ? v : null;
  };
  input.addEventListener("input", () => {
    const v = typed();
    if (v !== null && v !== state.z[state.cell]) setCell(state.cell, v);
  });
  input.addEventListener("change", () => {
    if (typed() === null) {
      setStatus(`a code is an integer from 0 to ${k - 1}`, true);
      input.value = state.z[state.cell];
    }
  });
  $("cell-down").addEventListener("click", () => stepCell(-1));
  $("cell-up").addEventListener("click", () => stepCell(1));
  $("cell-random").addEventListener("click", () => setCell(state.cell, Math.floor(Math.random() * k)));
  box.hidden = false;
  $("cell-editor").hidden = false;
  $("cell-usage").hidden = false;
  selectCell(0, false);
}

function selectCell(i, focus = true) {
  state.cell = i;
  const cells = $("grid").children;
  for (const cell of cells) {  // one Tab stop, the selected cell's: arrows move between them
    const selected = Number(cell.dataset.cell) === i;
    cell.classList.toggle("selected", selected);
    cell.tabIndex = selected ? 0 : -1;
  }
  if (focus) cells[i].focus();
  updateCellEditor();
}

// Keys on a cell: the arrows move to a neighbour, + and - step its code.
function cellKey(e, i) {
  const [h, w] = state.info.grid;
  const moves = { ArrowLeft: [0, -1], ArrowRight: [0, 1], ArrowUp: [-1, 0], ArrowDown: [1, 0] };
  if (e.key in moves) {
    const r = Math.floor(i / w) + moves[e.key][0], c = (i % w) + moves[e.key][1];
    if (r >= 0 && r < h && c >= 0 && c < w) selectCell(r * w + c);
  } else if (e.key === "+" || e.key === "=") {
    selectCell(i); stepCell(1);
  } else if (e.key === "-") {
    selectCell(i); stepCell(-1);
  } else return;
  e.preventDefault();
}

function stepCell(by) {
  const k = state.info.codebook_size;
  setCell(state.cell, (state.z[state.cell] + by + k) % k);
}

function setCell(i, code) {
  state.z[i] = code;
  updateGrid();
  decodeZ(`code grid: ${cellName(i)} = ${code}`);
}

function updateGrid() {
  if (!state.discrete) return;
  for (const cell of $("grid").children) {
    const i = Number(cell.dataset.cell), u = state.usage[i];
    cell.textContent = String(state.z[i]);
    const known = u !== undefined;
    // lightness from 97% (no test image) to 30% (all of them), on a square-root scale
    const light = known ? 97 - 67 * Math.sqrt(u) : 97;
    cell.style.background = `hsl(205, 55%, ${light}%)`;
    cell.style.color = light < 60 ? "#fff" : "#123";
    cell.classList.toggle("unused", known && u === 0);
    cell.title = `${cellName(i)}: code ${state.z[i]}` + (known ? `, in ${share(u)}` : "");
  }
  updateCellEditor();
}

function updateCellEditor() {
  if (!state.discrete) return;
  const i = state.cell, u = state.usage[i], input = $("cell-code");
  $("cell-name").textContent = `${cellName(i)}:`;
  if (document.activeElement !== input) input.value = state.z[i];
  $("cell-usage").textContent = u === undefined ? ""
    : `Code ${state.z[i]} is there in ${share(u)}.`;
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

// Decode the map's point ``xy`` (clamped to the map), marked on it.
function decodeMapPoint(xy) {
  const bound = state.info.z_bound;
  xy = xy.map((v) => Math.max(-bound, Math.min(bound, v)));
  state.marker = xy;
  drawMap();
  decodeQueue(async () => show(await api("api/map/decode", withClass({ xy })),
                               `map: (${xy[0].toFixed(2)}, ${xy[1].toFixed(2)})`));
}

function mapPointer() {
  const c = $("map");
  let dragging = false;
  const pick = (e) => {
    const r = c.getBoundingClientRect();
    decodeMapPoint(toMap((e.clientX - r.left) * c.width / r.width,
                         (e.clientY - r.top) * c.height / r.height));
  };
  c.addEventListener("pointerdown", (e) => { dragging = true; c.setPointerCapture(e.pointerId); pick(e); });
  c.addEventListener("pointermove", (e) => { if (dragging) pick(e); });
  c.addEventListener("pointerup", () => { dragging = false; });
  c.addEventListener("pointercancel", () => { dragging = false; });
  // the keyboard: arrows move the point (a 40th of the map, with Shift a 8th), from the
  // centre at first
  const moves = { ArrowLeft: [-1, 0], ArrowRight: [1, 0], ArrowUp: [0, 1], ArrowDown: [0, -1] };
  c.addEventListener("keydown", (e) => {
    const move = moves[e.key];
    if (!move) return;
    e.preventDefault();
    const step = state.info.z_bound * (e.shiftKey ? 0.25 : 0.05);
    const at = state.marker || [0, 0];
    decodeMapPoint([at[0] + move[0] * step, at[1] + move[1] * step]);
  });
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
    $("upload-error").textContent = "";
    state.upload = d.xy;
    if (showIt) decodeQueue(async () => show(d, `your image: ${$("upload").files[0].name}`));
    else drawMap();
  } catch (e) {  // said beside the control, and the panel no longer shows an earlier image
    for (const id of ["upload-input", "upload-recon"]) $(id).removeAttribute("src");
    $("upload-error").textContent = `${$("upload").files[0].name}: ${e.message}`;
    state.upload = null;
    drawMap();
    setStatus(e.message, true);
  }
}

function uploadPanel() {
  $("upload").addEventListener("change", () => {
    if ($("upload").files.length) encodeUpload(true);
  });
}

function setSlot(name, d, what) {
  $("interp-error").textContent = "";
  state.slots[name] = d.z;
  state.slotNames[name] = what;
  $(`${name}-thumb`).src = d.input;
  interpolate();
}

// A click on A's or B's picture decodes its code (a discrete model's grid, to edit).
function showSlot(name) {
  const z = state.slots[name];
  if (!z) return;
  state.z = z.slice();
  decodeZ(state.slotNames[name]);
}

function interpolate() {
  const { a, b } = state.slots;
  if (!a || !b) return;
  interpQueue(async () => {
    const steps = Number($("scrub").max) + 1;
    const d = await api("api/interpolate", withClass({ a, b, steps, method: $("method").value }));
    state.frames = d.frames;
    state.frameCodes = d.z;
    state.path = d.xy;
    scrub();
  });
}

function scrub() {
  const i = Number($("scrub").value);
  if (!state.frames.length) return;
  $("frame").src = state.frames[i];
  state.pathAt = state.path[i];
  if (state.discrete) {
    // each frame decodes the interpolated code vectors; its codes are them, quantized
    const codes = state.frameCodes[i], { a, b } = state.slots;
    const differ = (other) => codes.filter((c, j) => c !== other[j]).length;
    $("frame-note").textContent = `frame ${i} of ${state.frames.length - 1}, codes ` +
      `quantized: ${differ(a)} cells differ from A, ${differ(b)} from B`;
    $("frame-row").hidden = false;
  }
  drawMap();
}

function interpPanel() {
  for (const name of ["a", "b"]) {
    const index = $(`${name}-index`);
    index.max = state.info.images - 1;
    const fail = (message) => { $("interp-error").textContent = message; setStatus(message, true); };
    const pick = async () => {
      if (index.value.trim() === "") return fail(`${name.toUpperCase()}: enter a test image index`);
      const i = Number(index.value);
      try { setSlot(name, await api(`api/images/${i}`), `test image ${i}`); }
      catch (e) { fail(`${name.toUpperCase()}: ${e.message}`); }
    };
    $(`${name}-pick`).addEventListener("click", pick);
    index.addEventListener("change", pick);
    $(`${name}-file`).addEventListener("change", async () => {
      if (!$(`${name}-file`).files.length) return;
      const file = $(`${name}-file`).files[0].name;
      try { setSlot(name, await api("api/encode", fileForm($(`${name}-file`))), `image ${file}`); }
      catch (e) { fail(`${name.toUpperCase()}, ${file}: ${e.message}`); }
    });
    const thumb = $(`${name}-thumb`);
    thumb.addEventListener("click", () => showSlot(name));
    thumb.addEventListener("keydown", (e) => {
      if (e.key === "Enter" || e.key === " ") { e.preventDefault(); showSlot(name); }
    });
    pick();
  }
  $("method").addEventListener("change", interpolate);
  $("scrub").addEventListener("input", scrub);
  $("frame-edit").addEventListener("click", () => {
    const i = Number($("scrub").value);
    if (!state.frameCodes[i]) return;
    state.z = state.frameCodes[i].slice();
    decodeZ(`interpolation frame ${i}, its codes quantized`);
  });
}

// ---- start -----------------------------------------------------------------------------
async function start() {
  const info = await api("api/info");
  state.info = info;
  state.discrete = info.latent_kind === "discrete";
  const latent = state.discrete
    ? `${info.grid[0]}x${info.grid[1]} codes of ${info.codebook_size} (vectors of ${info.latent_dims})`
    : `latent ${info.latent_dims}`;
  state.z = new Array(state.discrete ? info.grid[0] * info.grid[1] : info.latent_dims).fill(0);
  $("about").textContent = `${info.model} · ${info.dataset} · ${latent}` +
    ` · ${info.images} test images · samples: ${info.sampler}` +
    (info.conditional ? ` · conditional on ${info.classes.length} classes` : "");
  $("map-kind").textContent = info.map === "code" ? "(the code itself)"
    : state.discrete ? "(the plane of the encoder outputs' two principal directions; a point " +
      "decodes to its nearest codes)"
    : "(the plane of the codes' two principal directions)";
  buildClassPicker(info);
  buildSliders(info);
  if (state.discrete) {
    buildGrid(info);
    $("origin").hidden = true;
    $("method").querySelector("option[value='slerp']").remove();  // linear only
    $("slot-note").textContent = "Click A or B to edit its code grid.";
  }
  const data = await api("api/map");
  setView(data);
  drawPoints(data);
  buildLegend(info, data);
  mapPointer();
  uploadPanel();
  interpPanel();
  const sampled = state.discrete && !info.fitted_sampler
    ? "a random sample (uniform codes: no fitted prior)" : "a random sample";
  $("sample").addEventListener("click", () => decodeQueue(
    async () => show(await api("api/sample", withClass({})), sampled)));
  $("origin").addEventListener("click", () => {
    state.z = new Array(info.latent_dims).fill(0);
    decodeZ("z = 0");
  });
  if (state.discrete) {  // no code stands for "zero": start from test image 0's grid
    state.z = (await api("api/images/0")).z;
    decodeZ("test image 0");
  } else decodeZ("z = 0");
  document.body.dataset.ready = "1";
}

start().catch((e) => setStatus(`cannot start: ${e.message}`, true));

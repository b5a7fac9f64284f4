// The clipseg page: upload once (/v1/images), one decoder call per new prompt (/v1/segment, format=float32),
// thresholding and drawing here. `p > Math.fround(t)` on the float32 probabilities is exactly the server's
// test (clipseg.thresholds.binary_mask compares a float32 map with the threshold rounded to float32), so the
// masks drawn here equal the server's mask PNGs at the same threshold.
"use strict";

const COLOURS = [[230, 25, 75], [60, 180, 75], [255, 225, 25], [0, 130, 200], [245, 130, 48], [145, 30, 180],
  [70, 240, 240], [240, 50, 230], [210, 245, 60], [250, 190, 212], [0, 128, 128], [220, 190, 255]];
const HEAT = [[0, 0, 4], [40, 11, 84], [101, 21, 110], [159, 42, 99], [212, 72, 66], [245, 125, 21],
  [250, 193, 39], [252, 255, 164]];
const ALPHA = 0.5;
const THUMB = 180;
const KEY_STORE = "clipseg-api-key";

const $ = (id) => document.getElementById(id);
const ui = {
  file: $("image-input"), drop: $("drop"), prompt: $("prompt-input"), negative: $("negative-input"),
  chips: $("chips"), negativeChips: $("negative-chips"), threshold: $("threshold"), thresholdValue: $("threshold-value"),
  download: $("download"), status: $("status"), latency: $("latency"), result: $("result"), heatmaps: $("heatmaps"),
  model: $("model"),
};
const state = {
  file: null, imageId: null, width: 0, height: 0, base: null, prompts: [], negatives: [], selected: -1,
  generation: 0, key: sessionStorage.getItem(KEY_STORE), downloadUrl: null, colourIndex: 0,
};

function setStatus(text, isError = false) {
  ui.status.textContent = text;
  ui.status.classList.toggle("error", isError);
}

function threshold() {
  return Math.fround(parseFloat(ui.threshold.value));
}

class ApiError extends Error {
  constructor(status, message) { super(message); this.status = status; }
}

// One call to the API with the bearer key; asks for the key (once, then kept for the session) on a 401.
async function api(path, form, asked = false) {
  const headers = state.key ? { Authorization: `Bearer ${state.key}` } : {};
  const started = performance.now();
  const response = await fetch(path, { method: form ? "POST" : "GET", body: form, headers });
  ui.latency.textContent = `last call ${Math.round(performance.now() - started)} ms`;
  if (response.status === 401 && !asked) {
    const key = window.prompt(state.key ? "Wrong API key. API key of this server:" : "This server needs an API key:");
    if (key) {
      state.key = key.trim();
      sessionStorage.setItem(KEY_STORE, state.key);
      return api(path, form, true);
    }
  }
  if (!response.ok) {
    let message = `${response.status} ${response.statusText}`;
    try { message = (await response.json()).error || message; } catch (error) { /* not JSON */ }
    throw new ApiError(response.status, message);
  }
  return response;
}

async function loadImage(file) {
  state.file = file;
  state.imageId = null;
  state.generation += 1;
  for (const prompt of state.prompts) prompt.probabilities = null;
  setStatus("uploading…");
  try {
    const form = new FormData();
    form.append("image", file, file.name || "image");
    const answer = await (await api("/v1/images", form)).json();
    Object.assign(state, { imageId: answer.image_id, width: answer.width, height: answer.height });
    state.base = await basePixels(file, answer.width, answer.height);
    if (state.prompts.length) await segment(state.prompts.map((p) => p.text));
    else { render(); setStatus("add a prompt"); }
  } catch (error) {
    setStatus(error.message, true);
  }
}

// The photo's pixels at the server's size (EXIF orientation applied, as the server does); grey if the browser
// cannot decode the format.
async function basePixels(file, width, height) {
  const canvas = new OffscreenCanvas(width, height);
  const context = canvas.getContext("2d");
  try {
    const bitmap = await createImageBitmap(file, { imageOrientation: "from-image" });
    context.drawImage(bitmap, 0, 0, width, height);
    bitmap.close();
  } catch (error) {
    context.fillStyle = "#888";
    context.fillRect(0, 0, width, height);
  }
  return context.getImageData(0, 0, width, height).data;
}

// Probabilities of `texts` (one decoder call), stored on their prompts; the image is uploaded again if the
// server evicted it.
async function segment(texts, retried = false) {
  if (!state.imageId || !texts.length) return;
  const generation = state.generation;
  setStatus("segmenting…");
  const form = new FormData();
  form.append("image_id", state.imageId);
  for (const text of texts) form.append("prompt", text);
  for (const text of state.negatives) form.append("negative", text);
  form.append("format", "float32");
  let buffer;
  try {
    buffer = await (await api("/v1/segment", form)).arrayBuffer();
  } catch (error) {
    if (error.status === 404 && !retried && state.file) {
      try {
        const again = new FormData();
        again.append("image", state.file, state.file.name || "image");
        state.imageId = (await (await api("/v1/images", again)).json()).image_id;
        return segment(texts, true);
      } catch (uploadError) {
        error = uploadError;
      }
    }
    setStatus(error.message, true);
    return;
  }
  if (generation !== state.generation) return; // the image or the negatives changed meanwhile
  const size = state.width * state.height;
  texts.forEach((text, index) => {
    const prompt = state.prompts.find((p) => p.text === text);
    if (prompt) prompt.probabilities = new Float32Array(buffer, index * size * 4, size);
  });
  render();
  setStatus("ready");
}

function render() {
  drawOverlay();
  renderHeatmaps();
  updateDownload();
}

// The photo with every pixel above the threshold tinted in the colour of its most probable prompt.
function drawOverlay() {
  const { width, height } = state;
  if (!width || !state.base) return;
  ui.result.width = width;
  ui.result.height = height;
  const context = ui.result.getContext("2d");
  const image = context.createImageData(width, height);
  const out = image.data;
  out.set(state.base);
  const t = threshold();
  const ready = state.prompts.filter((p) => p.probabilities);
  const size = width * height;
  for (let i = 0; i < size; i++) {
    let best = -1;
    let bestValue = -1;
    for (let k = 0; k < ready.length; k++) {
      const value = ready[k].probabilities[i];
      if (value > t && value > bestValue) { best = k; bestValue = value; }
    }
    if (best >= 0) {
      const colour = ready[best].colour;
      const o = 4 * i;
      out[o] = Math.round(out[o] * (1 - ALPHA) + colour[0] * ALPHA);
      out[o + 1] = Math.round(out[o + 1] * (1 - ALPHA) + colour[1] * ALPHA);
      out[o + 2] = Math.round(out[o + 2] * (1 - ALPHA) + colour[2] * ALPHA);
    }
  }
  context.putImageData(image, 0, 0);
}

function heatColour(p) {
  const x = Math.min(Math.max(p, 0), 1) * (HEAT.length - 1);
  const i = Math.min(Math.floor(x), HEAT.length - 2);
  const f = x - i;
  return HEAT[i].map((c, j) => Math.round(c + (HEAT[i + 1][j] - c) * f));
}

function renderHeatmaps() {
  ui.heatmaps.replaceChildren();
  if (!state.width) return;
  const scale = Math.min(1, THUMB / state.width);
  const w = Math.max(1, Math.round(state.width * scale));
  const h = Math.max(1, Math.round(state.height * scale));
  state.prompts.forEach((prompt, index) => {
    if (!prompt.probabilities) return;
    const figure = document.createElement("figure");
    const canvas = document.createElement("canvas");
    canvas.width = w;
    canvas.height = h;
    canvas.style.setProperty("--c", rgb(prompt.colour));
    const context = canvas.getContext("2d");
    const image = context.createImageData(w, h);
    for (let y = 0; y < h; y++) {
      const sy = Math.min(state.height - 1, Math.floor(y / scale));
      for (let x = 0; x < w; x++) {
        const sx = Math.min(state.width - 1, Math.floor(x / scale));
        const [r, g, b] = heatColour(prompt.probabilities[sy * state.width + sx]);
        const o = 4 * (y * w + x);
        image.data[o] = r; image.data[o + 1] = g; image.data[o + 2] = b; image.data[o + 3] = 255;
      }
    }
    context.putImageData(image, 0, 0);
    const caption = document.createElement("figcaption");
    caption.textContent = prompt.text;
    figure.append(canvas, caption);
    figure.title = `heatmap of “${prompt.text}”`;
    figure.addEventListener("click", () => select(index));
    ui.heatmaps.append(figure);
  });
}

function rgb(colour) {
  return `rgb(${colour.join(",")})`;
}

// The download link: the selected prompt's mask at the current threshold, made here (no request); a click
// fetches the server's PNG at the same threshold (identical pixels, and the very bytes the API and CLI give).
function updateDownload() {
  const prompt = state.prompts[state.selected];
  if (state.downloadUrl) { URL.revokeObjectURL(state.downloadUrl); state.downloadUrl = null; }
  if (!prompt || !prompt.probabilities) {
    ui.download.classList.add("disabled");
    ui.download.href = "#";
    return;
  }
  const { width, height } = state;
  const canvas = document.createElement("canvas");
  canvas.width = width;
  canvas.height = height;
  const context = canvas.getContext("2d");
  const image = context.createImageData(width, height);
  const t = threshold();
  for (let i = 0; i < width * height; i++) {
    const v = prompt.probabilities[i] > t ? 255 : 0;
    const o = 4 * i;
    image.data[o] = v; image.data[o + 1] = v; image.data[o + 2] = v; image.data[o + 3] = 255;
  }
  context.putImageData(image, 0, 0);
  const url = canvas.toDataURL("image/png");
  ui.download.href = url;
  ui.download.download = `${fileName(prompt.text)}.png`;
  ui.download.dataset.threshold = ui.threshold.value;
  ui.download.dataset.prompt = prompt.text;
  ui.download.classList.remove("disabled");
}

function fileName(text) {
  return text.normalize("NFKC").trim().replace(/\s+/g, "_").replace(/[^\p{L}\p{N}_-]+/gu, "-").slice(0, 80) || "mask";
}

ui.download.addEventListener("click", async (event) => {
  if (ui.download.dataset.fromServer === "1") { delete ui.download.dataset.fromServer; return; }
  const prompt = state.prompts[state.selected];
  if (!prompt || !prompt.probabilities || !state.imageId) return;
  event.preventDefault();
  clearTimeout(downloadTimer);
  updateDownload(); // the fallback below is then the mask at the current threshold
  try {
    const form = new FormData();
    form.append("image_id", state.imageId);
    form.append("prompt", prompt.text);
    for (const text of state.negatives) form.append("negative", text);
    form.append("threshold", ui.threshold.value);
    form.append("format", "png");
    const blob = await (await api("/v1/segment", form)).blob();
    if (state.downloadUrl) URL.revokeObjectURL(state.downloadUrl);
    state.downloadUrl = URL.createObjectURL(blob);
    ui.download.href = state.downloadUrl;
  } catch (error) {
    setStatus(`server mask unavailable (${error.message}); downloading the mask computed here`, true);
  }
  ui.download.dataset.fromServer = "1";
  ui.download.click();
});

function select(index) {
  state.selected = index;
  renderChips();
  updateDownload();
}

function renderChips() {
  ui.chips.replaceChildren(...state.prompts.map((prompt, index) =>
    chip(prompt.text, "prompt-chip", prompt.colour, index === state.selected, () => select(index), () => removePrompt(index))));
  ui.negativeChips.replaceChildren(...state.negatives.map((text, index) =>
    chip(text, "negative-chip", [120, 120, 120], false, null, () => removeNegative(index))));
}

function chip(text, testId, colour, selected, onClick, onRemove) {
  const element = document.createElement("span");
  element.className = `chip${selected ? " selected" : ""}${testId === "negative-chip" ? " negative" : ""}`;
  element.dataset.testid = testId;
  element.style.setProperty("--c", rgb(colour));
  element.title = text;
  const label = document.createElement("span");
  label.textContent = text;
  const remove = document.createElement("button");
  remove.type = "button";
  remove.textContent = "×";
  remove.setAttribute("aria-label", `remove ${text}`);
  remove.addEventListener("click", (event) => { event.stopPropagation(); onRemove(); });
  element.append(label, remove);
  if (onClick) element.addEventListener("click", onClick);
  return element;
}

function addPrompt(text) {
  const existing = state.prompts.findIndex((p) => p.text === text);
  if (existing >= 0) { select(existing); return; }
  const colour = COLOURS[state.colourIndex++ % COLOURS.length];
  state.prompts.push({ text, colour, probabilities: null });
  state.selected = state.prompts.length - 1;
  renderChips();
  if (state.imageId) segment([text]);
  else if (!state.file) setStatus("pick an image");
}

function removePrompt(index) {
  state.prompts.splice(index, 1);
  if (state.selected >= state.prompts.length) state.selected = state.prompts.length - 1;
  renderChips();
  render();
}

function negativesChanged() {
  state.generation += 1;
  renderChips();
  for (const prompt of state.prompts) prompt.probabilities = null;
  if (state.imageId && state.prompts.length) segment(state.prompts.map((p) => p.text));
  else render();
}

function removeNegative(index) {
  state.negatives.splice(index, 1);
  negativesChanged();
}

function onEnter(input, add) {
  input.addEventListener("keydown", (event) => {
    if (event.key !== "Enter" || event.isComposing) return;
    event.preventDefault();
    const text = input.value;
    if (!text.trim()) return;
    input.value = "";
    add(text);
  });
}

onEnter(ui.prompt, addPrompt);
onEnter(ui.negative, (text) => {
  if (!state.negatives.includes(text)) { state.negatives.push(text); negativesChanged(); }
});
let downloadTimer = 0;
ui.threshold.addEventListener("input", () => {
  ui.thresholdValue.textContent = Number(ui.threshold.value).toFixed(2);
  drawOverlay(); // thresholding is local: no request
  clearTimeout(downloadTimer);
  downloadTimer = setTimeout(updateDownload, 150); // encoding a full-size PNG per slider step would lag
});
ui.file.addEventListener("change", () => { if (ui.file.files.length) loadImage(ui.file.files[0]); });
for (const name of ["dragenter", "dragover"]) {
  ui.drop.addEventListener(name, (event) => { event.preventDefault(); ui.drop.classList.add("over"); });
}
ui.drop.addEventListener("dragleave", () => ui.drop.classList.remove("over"));
ui.drop.addEventListener("drop", (event) => {
  event.preventDefault();
  ui.drop.classList.remove("over");
  if (event.dataTransfer.files.length) loadImage(event.dataTransfer.files[0]);
});

// The model's name in the header; waits while the server is still loading it (503), asks for the key if needed.
(async () => {
  for (let attempt = 0; attempt < 600; attempt++) {
    try {
      const model = await (await api("/v1/model")).json();
      ui.model.textContent = `${model.source} · clipseg ${model.version}`;
      return;
    } catch (error) {
      if (error.status !== 503) { setStatus(error.message, true); return; }
      await new Promise((resolve) => setTimeout(resolve, 1000));
    }
  }
})();

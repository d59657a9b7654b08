// Reading captchas in the browser with an exported .onnx model, on onnxruntime-web (installed from
// the npm registry into node_modules/ by `npm install`; nothing is fetched from elsewhere). The
// preprocessing and decoding follow captcha_recognize exactly: the model's metadata says the input
// size, channels and ink colours; images are composited on white, converted to grey as Pillow does,
// resized with Pillow's bilinear filter, normalised to [-1, 1]; CTC readings of a fixed-length model
// take the most probable alignment of that length.
//
//   import { loadModel } from "./reader.js";
//   const reader = await loadModel("model.onnx");        // a URL, ArrayBuffer or File
//   const { text, confidence, accept } = await reader.read(file);   // a File, Blob, URL or ImageBitmap
import * as ort from "./node_modules/onnxruntime-web/dist/ort.wasm.min.mjs";

ort.env.wasm.numThreads = 1; // threads need cross-origin isolation headers a plain static server lacks

const GRAPH_FIELD = 7, METADATA_FIELD = 14; // ModelProto's field numbers (onnx.proto)
const INK_TOLERANCE = 3; // captcha_recognize.data.preprocess.INK_TOLERANCE
const MAX_FRAMES = 32; // captcha_recognize.data.images.MAX_FRAMES
const PRECISION_BITS = 22; // Pillow's Resample.c: 32 - 8 - 2

// ------------------------------------------------------------------ the model file

function varint(bytes, i) {
  let value = 0, scale = 1;
  for (;;) {
    if (i >= bytes.length) throw new Error("truncated varint");
    const b = bytes[i++];
    value += (b & 0x7f) * scale;
    scale *= 128;
    if (b < 0x80) return [value, i];
  }
}

/** The top-level fields of a protobuf message: [field number, Uint8Array or number]. */
function* fields(bytes) {
  let i = 0;
  while (i < bytes.length) {
    let key;
    [key, i] = varint(bytes, i);
    const number = Math.floor(key / 8), wire = key % 8;
    if (wire === 0) {
      let v;
      [v, i] = varint(bytes, i);
      yield [number, v];
    } else if (wire === 2) {
      let size;
      [size, i] = varint(bytes, i);
      yield [number, bytes.subarray(i, i + size)];
      i += size;
    } else if (wire === 1 || wire === 5) {
      const size = wire === 1 ? 8 : 4;
      yield [number, bytes.subarray(i, i + size)];
      i += size;
    } else {
      throw new Error(`unsupported protobuf wire type ${wire}`);
    }
  }
}

/** An ONNX model's serialized graph and its metadata entries. */
export function graphAndMetadata(bytes) {
  const text = new TextDecoder();
  let graph = new Uint8Array(0);
  const meta = {};
  for (const [number, value] of fields(bytes)) {
    if (number === GRAPH_FIELD) graph = value;
    if (number === METADATA_FIELD) {
      const entry = Object.fromEntries(fields(value));
      meta[text.decode(entry[1] || new Uint8Array(0))] = text.decode(entry[2] || new Uint8Array(0));
    }
  }
  return { graph, meta };
}

async function sha256(parts) {
  const total = parts.reduce((n, p) => n + p.length, 0), joined = new Uint8Array(total);
  let at = 0;
  for (const p of parts) { joined.set(p, at); at += p.length; }
  const digest = new Uint8Array(await crypto.subtle.digest("SHA-256", joined));
  return Array.from(digest, (b) => b.toString(16).padStart(2, "0")).join("");
}

async function bytesOf(source) {
  if (source instanceof ArrayBuffer) return new Uint8Array(source);
  if (source instanceof Uint8Array) return source;
  if (source instanceof Blob) return new Uint8Array(await source.arrayBuffer());
  const response = await fetch(source);
  if (!response.ok) throw new Error(`${source}: HTTP ${response.status}`);
  return new Uint8Array(await response.arrayBuffer());
}

/** A Reader for an exported model, its metadata checked against the SHA-256 stored with it. */
export async function loadModel(source) {
  const bytes = await bytesOf(source);
  const { graph, meta } = graphAndMetadata(bytes);
  if (!meta.captcha) throw new Error("not an ONNX export of captcha-recognize (no 'captcha' metadata)");
  const encode = (s) => new TextEncoder().encode(s);
  const digest = await sha256([encode("graph"), graph, encode("spec"), encode(meta.captcha)]);
  if (digest !== meta.captcha_sha256) throw new Error("the model is corrupted: its graph or spec does not match its SHA-256");
  const session = await ort.InferenceSession.create(bytes, { executionProviders: ["wasm"] });
  return new Reader(session, JSON.parse(meta.captcha));
}

// ------------------------------------------------------------------ images

async function frames(source) {
  const blob = source instanceof Blob ? source : typeof source === "string" ? await (await fetch(source)).blob() : null;
  const animated = blob && ["image/gif", "image/webp", "image/apng"].includes(blob.type);
  if (animated && "ImageDecoder" in self && await ImageDecoder.isTypeSupported(blob.type)) {
    const decoder = new ImageDecoder({ data: await blob.arrayBuffer(), type: blob.type, colorSpaceConversion: "none" });
    await decoder.tracks.ready;
    const count = Math.min(decoder.tracks.selectedTrack.frameCount || 1, MAX_FRAMES), out = [];
    for (let i = 0; i < count; i++) {
      const { image } = await decoder.decode({ frameIndex: i });
      out.push(pixels(image, image.displayWidth, image.displayHeight));
      image.close();
    }
    return out;
  }
  const bitmap = blob ? await createImageBitmap(blob, { premultiplyAlpha: "none", colorSpaceConversion: "none" })
    : source;
  return [pixels(bitmap, bitmap.width, bitmap.height)];
}

function pixels(image, width, height) {
  const canvas = new OffscreenCanvas(width, height);
  const context = canvas.getContext("2d", { willReadFrequently: true });
  context.drawImage(image, 0, 0);
  return { width, height, data: context.getImageData(0, 0, width, height).data };
}

/** RGBA on white, as Pillow's alpha_composite does it, then RGB bytes (width * height * 3). */
function onWhite({ width, height, data }) {
  const rgb = new Uint8Array(width * height * 3);
  for (let p = 0; p < width * height; p++) {
    const a = data[p * 4 + 3];
    for (let c = 0; c < 3; c++) {
      const v = data[p * 4 + c];
      rgb[p * 3 + c] = a === 255 ? v : composite(v, a);
    }
  }
  return { width, height, rgb };
}

function composite(v, a) {
  // Pillow's AlphaComposite.c (its scalar path) over a white, opaque destination: exact for the
  // transparent and opaque pixels captchas have; a partly transparent one may differ by a level
  if (a === 0) return 255;
  const PRECISION = 7, outa255 = a * 255 + 255 * (255 - a);
  const coef1 = Math.floor(a * 255 * 255 * (1 << PRECISION) / outa255), coef2 = 255 * (1 << PRECISION) - coef1;
  const t = v * coef1 + 255 * coef2 + (0x80 << PRECISION);
  return (((t >>> 8) + t) >>> 8) >>> PRECISION;
}

/** Animated captchas: per pixel, the frame that stands out most from its own background. */
function merge(all) {
  if (all.length === 1) return all[0];
  const { width, height } = all[0], best = new Uint8Array(width * height * 3), score = new Int16Array(width * height).fill(-1);
  for (const frame of all) {
    const counts = new Map();
    for (let p = 0; p < width * height; p++) {
      const key = (frame.rgb[p * 3] << 16) | (frame.rgb[p * 3 + 1] << 8) | frame.rgb[p * 3 + 2];
      counts.set(key, (counts.get(key) || 0) + 1);
    }
    let background = 0, most = -1;
    for (const [key, n] of counts) if (n > most || (n === most && key < background)) { background = key; most = n; }
    const bg = [background >> 16, (background >> 8) & 255, background & 255];
    for (let p = 0; p < width * height; p++) {
      let away = 0;
      for (let c = 0; c < 3; c++) away = Math.max(away, Math.abs(frame.rgb[p * 3 + c] - bg[c]));
      if (away > score[p]) {
        score[p] = away;
        best.set(frame.rgb.subarray(p * 3, p * 3 + 3), p * 3);
      }
    }
  }
  return { width, height, rgb: best };
}

// ------------------------------------------------------------------ the one preprocessing path

/** Pillow's bilinear coefficients for one axis: per output pixel its first input pixel, count and weights. */
function coefficients(inSize, outSize) {
  const scale = inSize / outSize, filterscale = Math.max(scale, 1), support = filterscale;
  const ksize = Math.ceil(support) * 2 + 1, bounds = [], weights = new Int32Array(outSize * ksize);
  for (let xx = 0; xx < outSize; xx++) {
    const center = (xx + 0.5) * scale, ss = 1 / filterscale;
    const xmin = Math.max(0, Math.trunc(center - support + 0.5));
    const xmax = Math.min(inSize, Math.trunc(center + support + 0.5)) - xmin;
    const w = [];
    let ww = 0;
    for (let x = 0; x < xmax; x++) {
      const d = Math.abs((x + xmin - center + 0.5) * ss), v = d < 1 ? 1 - d : 0;
      w.push(v);
      ww += v;
    }
    for (let x = 0; x < xmax; x++) {
      const v = ww !== 0 ? w[x] / ww : w[x];
      weights[xx * ksize + x] = v < 0 ? Math.trunc(-0.5 + v * (1 << PRECISION_BITS)) : Math.trunc(0.5 + v * (1 << PRECISION_BITS));
    }
    bounds.push([xmin, xmax]);
  }
  return { bounds, weights, ksize };
}

function clip8(ss) {
  return Math.min(255, Math.max(0, Math.floor(ss / (1 << PRECISION_BITS))));
}

/** One 8-bit band (width * height) resized to outW x outH with Pillow's BILINEAR filter. */
export function resizeBand(band, width, height, outW, outH) {
  if (width === outW && height === outH) return band;
  const vert = coefficients(height, outH);
  const first = vert.bounds[0][0], last = vert.bounds[outH - 1][0] + vert.bounds[outH - 1][1];
  let src = band, offset = 0, w = width;
  if (outW !== width) { // horizontal pass over the rows the vertical pass needs
    const horiz = coefficients(width, outW), tmp = new Uint8Array(outW * (last - first));
    for (let y = 0; y < last - first; y++) {
      for (let xx = 0; xx < outW; xx++) {
        const [xmin, xmax] = horiz.bounds[xx];
        let ss = 1 << (PRECISION_BITS - 1);
        for (let x = 0; x < xmax; x++) ss += src[(y + first) * width + x + xmin] * horiz.weights[xx * horiz.ksize + x];
        tmp[y * outW + xx] = clip8(ss);
      }
    }
    src = tmp; offset = first; w = outW;
  }
  if (outH === height) return src;
  const out = new Uint8Array(outW * outH);
  for (let yy = 0; yy < outH; yy++) {
    const [ymin0, ymax] = vert.bounds[yy], ymin = ymin0 - offset;
    for (let xx = 0; xx < w; xx++) {
      let ss = 1 << (PRECISION_BITS - 1);
      for (let y = 0; y < ymax; y++) ss += src[(y + ymin) * w + xx] * vert.weights[yy * vert.ksize + y];
      out[yy * w + xx] = clip8(ss);
    }
  }
  return out;
}

/** An RGB image as the model's normalised input (C, H, W): grey or colour bands, then one mask per ink colour. */
export function preprocess({ width, height, rgb }, pre) {
  const n = width * height, bands = [];
  if (pre.channels === 3) {
    for (let c = 0; c < 3; c++) bands.push(Uint8Array.from({ length: n }, (_, p) => rgb[p * 3 + c]));
  } else { // Pillow's RGB -> L: (R*19595 + G*38470 + B*7471 + 0x8000) >> 16
    bands.push(Uint8Array.from({ length: n }, (_, p) => (rgb[p * 3] * 19595 + rgb[p * 3 + 1] * 38470 + rgb[p * 3 + 2] * 7471 + 0x8000) >>> 16));
  }
  for (const ink of pre.ink || []) {
    bands.push(Uint8Array.from({ length: n }, (_, p) =>
      [0, 1, 2].every((c) => Math.abs(rgb[p * 3 + c] - ink[c]) <= INK_TOLERANCE) ? 0 : 255));
  }
  const size = pre.width * pre.height, x = new Float32Array(bands.length * size);
  bands.forEach((band, c) => {
    const resized = resizeBand(band, width, height, pre.width, pre.height);
    for (let i = 0; i < size; i++) x[c * size + i] = Math.fround(Math.fround(resized[i] / 127.5) - 1);
  });
  return x;
}

// ------------------------------------------------------------------ decoding

function logSoftmax(row) {
  let max = -Infinity;
  for (const v of row) max = Math.max(max, v);
  let sum = 0;
  for (const v of row) sum += Math.exp(v - max);
  const lse = Math.log(sum);
  return row.map((v) => v - max - lse);
}

function collapse(path) {
  const kept = [];
  let prev = 0;
  for (const k of path) { if (k !== prev && k !== 0) kept.push(k); prev = k; }
  return kept;
}

/** The most probable alignment of exactly `length` characters (captcha_recognize.data.codec). */
function pathOfLength(logP, length, fallback) {
  const T = logP.length, K = logP[0].length;
  let score = Array.from({ length: length + 1 }, () => new Float64Array(K).fill(-Infinity));
  score[0][0] = logP[0][0];
  for (let k = 1; k < K; k++) if (length >= 1) score[1][k] = logP[0][k];
  const prevClass = [], advanced = [];
  for (let t = 1; t < T; t++) {
    const top = score.map((row) => {
      let a1 = 0; for (let k = 1; k < K; k++) if (row[k] > row[a1]) a1 = k;
      let a2 = a1 === 0 ? 1 : 0; for (let k = 0; k < K; k++) if (k !== a1 && row[k] > row[a2]) a2 = k;
      return [a1, row[a1], a2, row[a2]];
    });
    const next = [], from = [], went = [];
    for (let n = 0; n <= length; n++) {
      const row = new Float64Array(K), arg = new Int32Array(K), go = new Uint8Array(K);
      for (let k = 0; k < K; k++) {
        let stay = score[n][k], stayArg = k;
        if (k === 0) { stay = top[n][1]; stayArg = top[n][0]; }
        let enter = -Infinity, enterArg = 0;
        if (n > 0) {
          const [a1, t1, a2, t2] = top[n - 1];
          enter = k === a1 ? t2 : t1; enterArg = k === a1 ? a2 : a1;
        }
        const g = k !== 0 && enter > stay;
        row[k] = (g ? enter : stay) + logP[t][k];
        arg[k] = g ? enterArg : stayArg;
        go[k] = g ? 1 : 0;
      }
      next.push(row); from.push(arg); went.push(go);
    }
    score = next; prevClass.push(from); advanced.push(went);
  }
  let k = 0; for (let j = 1; j < K; j++) if (score[length][j] > score[length][k]) k = j;
  if (!Number.isFinite(score[length][k])) return fallback;
  const path = new Array(T);
  let n = length;
  for (let t = T - 1; t > 0; t--) {
    path[t] = k;
    const kk = prevClass[t - 1][n][k];
    n -= advanced[t - 1][n][k];
    k = kk;
  }
  path[0] = k;
  return path;
}

export class Reader {
  constructor(session, spec) {
    this.session = session;
    this.spec = spec;
  }

  /** One line on the model: family, alphabet, input size and what it accepts. */
  describe() {
    const s = this.spec, pre = s.preprocess;
    const accepts = s.threshold === null || s.threshold === undefined ? "accepts every reading"
      : s.threshold > 1 ? "accepts nothing (no labelled images of these captchas vouch for any confidence)"
        : `accepts readings of confidence >= ${s.threshold.toFixed(4)}`;
    return `${s.arch}, alphabet ${s.alphabet}, input ${pre.width}x${pre.height}, ${accepts}`;
  }

  /** Read one image: { text, confidence, accept } as captcha_recognize reads it. */
  async read(source) {
    const pre = this.spec.preprocess;
    const x = preprocess(merge((await frames(source)).map(onWhite)), pre);
    const channels = pre.channels + (pre.ink || []).length;
    const input = new ort.Tensor("float32", x, [1, channels, pre.height, pre.width]);
    const output = (await this.session.run({ images: input })).logits;
    const [, steps, classes] = output.dims;
    const rows = Array.from({ length: steps }, (_, t) => Array.from(output.data.subarray(t * classes, (t + 1) * classes)));
    return this.decode(rows);
  }

  decode(rows) {
    const { alphabet, arch, label_length: length, fixed_length: fixed, temperature = 1, threshold } = this.spec;
    const chars = [...alphabet];
    let path = rows.map((row) => row.indexOf(Math.max(...row)));
    let text;
    if (arch === "crnn") {
      let kept = collapse(path);
      if (fixed && kept.length !== length) {
        path = pathOfLength(rows.map((row) => logSoftmax(row.map(Math.fround))), length, path);
        kept = collapse(path);
      }
      text = kept.map((k) => chars[k - 1]).join("");
    } else {
      text = path.map((k) => chars[k]).join("");
    }
    const logConf = rows.reduce((sum, row, t) => sum + logSoftmax(row.map((v) => v / temperature))[path[t]], 0);
    const confidence = Math.exp(logConf);
    return { text, confidence, accept: threshold === null || threshold === undefined || confidence >= threshold };
  }
}

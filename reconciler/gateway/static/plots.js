// Plots drawn by hand in SVG from each daemon's in-memory hour (GET /history): GPU memory
// and utilization per node, and each replica's state over time.
import { h, replace } from "./dom.js";

const W = 640;
const H = 160;
const PAD = { l: 48, r: 10, t: 10, b: 22 };
const COLORS = ["#2b6cb0", "#c05621", "#2f855a", "#6b46c1", "#b83280", "#2c7a7b", "#975a16", "#4a5568"];
const STATE_COLORS = {
  Pending: "#a0aec0", Starting: "#ecc94b", Ready: "#38a169", Draining: "#4299e1",
  Stopped: "#718096", Failed: "#e53e3e", CrashLoopBackOff: "#9b2c2c",
};

const gib = (mib) => `${(mib / 1024).toFixed(mib >= 10240 || mib === 0 ? 0 : 1)} GiB`;

function svg(tag, attrs, ...kids) { return h(`svg:${tag}`, attrs, ...kids); }

function axes(t0, t1, ymax, fmt) {
  const out = [];
  for (let i = 0; i <= 4; i++) {
    const y = PAD.t + (H - PAD.t - PAD.b) * (1 - i / 4);
    out.push(svg("line", { x1: PAD.l, x2: W - PAD.r, y1: y, y2: y, class: "grid" }));
    out.push(svg("text", { x: PAD.l - 4, y: y + 4, class: "tick", "text-anchor": "end" },
      fmt((ymax * i) / 4)));
  }
  for (let i = 0; i <= 4; i++) {
    const t = t0 + ((t1 - t0) * i) / 4;
    const x = PAD.l + ((W - PAD.l - PAD.r) * i) / 4;
    const anchor = i === 0 ? "start" : i === 4 ? "end" : "middle";
    out.push(svg("text", { x, y: H - 6, class: "tick", "text-anchor": anchor },
      new Date(t * 1000).toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" })));
  }
  return out;
}

function lineChart(title, samples, series, ymax, fmt) {
  const now = samples.length ? samples[samples.length - 1].t : Date.now() / 1000;
  const t0 = now - 3600;
  const x = (t) => PAD.l + ((t - t0) / 3600) * (W - PAD.l - PAD.r);
  const y = (v) => PAD.t + (H - PAD.t - PAD.b) * (1 - Math.min(1, v / Math.max(1, ymax)));
  const lines = series.map((s, i) => {
    const pts = samples.map((smp) => [smp.t, s.value(smp)]).filter(([, v]) => v !== null && v !== undefined);
    return svg("polyline", { class: "series", stroke: COLORS[i % COLORS.length], fill: "none",
      points: pts.map(([t, v]) => `${x(t).toFixed(1)},${y(v).toFixed(1)}`).join(" ") });
  });
  return h("figure", { class: "plot" }, h("figcaption", {}, title,
    series.map((s, i) => h("span", { class: "legend" }, h("i", { class: `sw c${i % COLORS.length}` }), s.name))),
    svg("svg", { viewBox: `0 0 ${W} ${H}`, width: W, height: H, role: "img", "aria-label": title },
      axes(t0, now, ymax, fmt), lines));
}

function stateChart(title, samples, keys, interval) {
  const rowH = 18;
  const height = PAD.t + keys.length * rowH + PAD.b;
  const now = samples.length ? samples[samples.length - 1].t : Date.now() / 1000;
  const t0 = now - 3600;
  const x = (t) => PAD.l + 90 + ((t - t0) / 3600) * (W - PAD.l - 90 - PAD.r);
  const kids = [];
  keys.forEach((k, row) => {
    const yy = PAD.t + row * rowH;
    kids.push(svg("text", { x: 4, y: yy + 13, class: "tick" }, k));
    for (const smp of samples) {
      const st = smp.replicas[k];
      if (!st) continue;
      kids.push(svg("rect", { x: x(smp.t - interval).toFixed(1), y: yy + 2,
        width: Math.max(1, x(smp.t) - x(smp.t - interval)).toFixed(1), height: rowH - 4,
        fill: STATE_COLORS[st] || "#000" }, svg("title", {}, `${k}: ${st}`)));
    }
  });
  return h("figure", { class: "plot" }, h("figcaption", {}, title,
    Object.entries(STATE_COLORS).map(([s, c]) => {
      const sw = h("i", { class: "sw" });
      sw.style.background = c;
      return h("span", { class: "legend" }, sw, s);
    })),
    svg("svg", { viewBox: `0 0 ${W} ${height}`, width: W, height, role: "img", "aria-label": title }, kids));
}

export function renderPlots(el, nodes, histories) {
  const cards = nodes.map((n) => {
    const hist = histories[n.name];
    if (!n.reachable || !hist) {
      return h("article", { class: "node unreachable" }, h("h2", {}, n.name), h("p", {}, "No history (unreachable)."));
    }
    const samples = hist.samples || [];
    const gpuIdx = [...new Set(samples.flatMap((s) => s.gpus.map((g) => g.index)))].sort((a, b) => a - b);
    const total = Math.max(1, ...samples.flatMap((s) => s.gpus.map((g) => g.memoryTotalMib)));
    const keys = [...new Set(samples.flatMap((s) => Object.keys(s.replicas)))].sort();
    const gpu = (i, f) => (smp) => { const g = smp.gpus.find((x) => x.index === i); return g ? f(g) : null; };
    return h("article", { class: "node", dataset: { node: n.name } },
      h("h2", {}, n.name, h("span", { class: "muted" }, ` ${samples.length} samples, one per ${hist.intervalSeconds} s`)),
      gpuIdx.length ? [
        lineChart("GPU memory used", samples, gpuIdx.map((i) => ({ name: `GPU ${i}`, value: gpu(i, (g) => g.memoryUsedMib) })), total, gib),
        lineChart("GPU utilization", samples, gpuIdx.map((i) => ({ name: `GPU ${i}`, value: gpu(i, (g) => g.utilizationPct) })), 100, (v) => `${Math.round(v)}%`),
      ] : h("p", { class: "muted" }, "No GPUs on this node."),
      keys.length ? stateChart("Replica states, last hour", samples, keys, hist.intervalSeconds)
        : h("p", { class: "muted" }, "No replicas in the last hour."));
  });
  replace(el, h("h2", { class: "title" }, "Plots (last hour)"), cards);
}

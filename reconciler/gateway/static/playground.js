// The Playground: chat with a model through the gateway's /v1/chat/completions, streamed;
// or the same prompt to two models side by side, each with its time to first token and
// tokens per second. The API key is the one pasted in the header (this tab only).
import { h, replace } from "./dom.js";
import { authHeaders, say } from "./app.js";

async function* sse(resp) {
  // OpenAI streams: `data: {...}` events separated by a blank line, ended by `data: [DONE]`
  const reader = resp.body.getReader();
  const dec = new TextDecoder();
  let buf = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buf += dec.decode(value, { stream: true });
    let cut;
    while ((cut = buf.search(/\r?\n\r?\n/)) >= 0) {
      const event = buf.slice(0, cut);
      buf = buf.slice(cut).replace(/^\r?\n\r?\n/, "");
      const data = event.split(/\r?\n/).filter((l) => l.startsWith("data:"))
        .map((l) => l.slice(5).trimStart()).join("\n");
      if (!data) continue;
      if (data === "[DONE]") return;
      yield JSON.parse(data);
    }
  }
}

class Panel {
  constructor(label, models) {
    this.select = h("select", { class: "model" });
    this.setModels(models);
    this.out = h("div", { class: "answer" });
    this.stats = h("div", { class: "stats muted" });
    this.messages = [];
    this.el = h("div", { class: "panel", dataset: { panel: label } },
      h("label", {}, `Model ${label} `, this.select), this.out, this.stats);
  }

  setModels(models) {
    const keep = this.select.value;
    replace(this.select, models.map((m) => h("option", { value: m }, m)));
    if (models.includes(keep)) this.select.value = keep;
  }

  clear() {
    this.messages = [];
    replace(this.out);
    replace(this.stats);
  }

  async run(prompt, temperature, maxTokens) {
    const model = this.select.value;
    this.messages.push({ role: "user", content: prompt });
    this.out.append(h("div", { class: "turn user" }, prompt));
    const answer = h("div", { class: "turn assistant" });
    this.out.append(answer);
    const t0 = performance.now();
    let first = null;
    let chunks = 0;
    let usage = null;
    let text = "";
    this.el.dataset.done = "";
    try {
      const resp = await fetch("/v1/chat/completions", {
        method: "POST",
        headers: { "Content-Type": "application/json", ...authHeaders() },
        body: JSON.stringify({ model, messages: this.messages, temperature, max_tokens: maxTokens,
          stream: true, stream_options: { include_usage: true } }),
      });
      if (!resp.ok) {
        const body = await resp.json().catch(() => ({}));
        throw new Error(body.error?.message || `${resp.status}`);
      }
      for await (const ev of sse(resp)) {
        if (ev.usage) usage = ev.usage;
        const delta = ev.choices?.[0]?.delta?.content;
        if (delta) {
          first ??= performance.now();
          chunks += 1;
          text += delta;
          answer.append(document.createTextNode(delta));
        }
      }
      const end = performance.now();
      const tokens = usage?.completion_tokens ?? chunks;
      const ttft = first === null ? null : (first - t0) / 1000;
      const rate = first !== null && end > first && tokens > 1 ? (tokens - 1) / ((end - first) / 1000) : null;
      this.messages.push({ role: "assistant", content: text });
      replace(this.stats, `TTFT ${ttft === null ? "–" : ttft.toFixed(3) + " s"} · `,
        `${tokens} tokens · ${rate === null ? "–" : rate.toFixed(1) + " tokens/s"}`);
      this.el.dataset.ttft = ttft ?? "";
      this.el.dataset.tokens = tokens;
      this.el.dataset.done = "ok";
    } catch (e) {
      this.messages.pop();
      answer.append(h("span", { class: "bad" }, `error: ${e.message}`));
      this.el.dataset.done = "error";
    }
  }
}

export class Playground {
  constructor(el) {
    this.el = el;
    this.models = null;
    this.temperature = h("input", { id: "pg-temperature", type: "number", min: 0, max: 2, step: 0.1, value: 0.7 });
    this.maxTokens = h("input", { id: "pg-max-tokens", type: "number", min: 1, max: 8192, step: 1, value: 128 });
    this.compare = h("input", { id: "pg-compare", type: "checkbox", onchange: () => this.layout() });
    this.prompt = h("textarea", { id: "pg-prompt", rows: 3, placeholder: "Say something" });
    this.send = h("button", { id: "pg-send", type: "submit" }, "Send");
    this.panels = h("div", { class: "panels" });
    this.a = new Panel("A", []);
    this.b = new Panel("B", []);
    const form = h("form", { id: "pg-form", onsubmit: (ev) => { ev.preventDefault(); this.go(); } },
      h("div", { class: "controls" },
        h("label", {}, "temperature ", this.temperature), " ",
        h("label", {}, "max tokens ", this.maxTokens), " ",
        h("label", {}, this.compare, " compare two models"), " ",
        h("button", { id: "pg-clear", type: "button", onclick: () => { this.a.clear(); this.b.clear(); } }, "Clear")),
      this.prompt, this.send);
    replace(el, h("h2", { class: "title" }, "Playground"), this.panels, form);
    this.layout();
  }

  layout() {
    replace(this.panels, this.a.el, this.compare.checked ? this.b.el : "");
    this.panels.classList.toggle("two", this.compare.checked);
  }

  async show() {
    if (this.models && this.models.length) return;
    const resp = await fetch("/v1/models", { headers: authHeaders() });
    const body = await resp.json().catch(() => ({}));
    if (!resp.ok) throw new Error(body.error?.message || `${resp.status}`);
    this.models = body.data.map((m) => m.id);
    this.a.setModels(this.models);
    this.b.setModels(this.models);
    if (this.models.length > 1 && this.b.select.value === this.a.select.value) this.b.select.value = this.models[1];
    if (!this.models.length) say("No model has a Ready replica yet.");
  }

  async go() {
    const prompt = this.prompt.value.trim();
    if (!prompt) return;
    this.send.disabled = true;
    const t = Number(this.temperature.value);
    const n = Math.max(1, Math.floor(Number(this.maxTokens.value) || 1));
    try {
      await Promise.all([this.a.run(prompt, t, n), this.compare.checked ? this.b.run(prompt, t, n) : null]);
    } finally {
      this.send.disabled = false;
    }
  }
}

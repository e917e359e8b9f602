// An engine's log, followed: asks the node's daemon (through the gateway) for what came
// after the last byte it has, once a second. Text only; the page keeps the last 512 KiB.
import { h, replace } from "./dom.js";
import { api } from "./app.js";

const KEEP_CHARS = 512 * 1024;
const POLL_MS = 1000;

export class LogView {
  constructor(el) {
    this.el = el;
    this.node = h("select", { id: "log-node", onchange: () => this.pickNode() });
    this.member = h("select", { id: "log-member", onchange: () => this.pickMember() });
    this.follow = h("input", { type: "checkbox", id: "log-follow", checked: "checked" });
    this.pre = h("pre", { id: "log-text", class: "log" });
    this.info = h("span", { class: "muted", id: "log-info" });
    replace(el, h("h2", { class: "title" }, "Engine logs"),
      h("div", { class: "controls" }, h("label", {}, "Node ", this.node), " ",
        h("label", {}, "Member ", this.member), " ",
        h("label", {}, this.follow, " follow"), " ", this.info),
      this.pre);
    this.known = "";
    this.offset = null;
    this.timer = null;
  }

  nodes(nodes) {
    const names = nodes.filter((n) => n.reachable).map((n) => n.name);
    if (names.join("\n") === this.known) return;
    this.known = names.join("\n");
    const keep = this.node.value;
    replace(this.node, names.map((n) => h("option", { value: n }, n)));
    if (names.includes(keep)) this.node.value = keep;
    this.pickNode();
  }

  async pickNode() {
    const node = this.node.value;
    if (!node) return;
    try {
      const logs = await api(`/console/api/logs?node=${encodeURIComponent(node)}`);
      const keep = this.member.value;
      replace(this.member, logs.map((l) => h("option", { value: l.member }, `${l.member} (${l.size} B)`)));
      if (logs.some((l) => l.member === keep)) this.member.value = keep;
      this.pickMember();
    } catch (e) {
      replace(this.info, e.message);
    }
  }

  pickMember() {
    this.offset = null;
    replace(this.pre);
    this.pause();
    if (this.member.value) this.poll();
  }

  pause() {
    clearTimeout(this.timer);
    this.timer = null;
  }

  async poll() {
    const node = this.node.value;
    const member = this.member.value;
    try {
      const q = `node=${encodeURIComponent(node)}&member=${encodeURIComponent(member)}`
        + (this.offset === null ? "" : `&offset=${this.offset}`);
      const piece = await api(`/console/api/log?${q}`);
      if (node !== this.node.value || member !== this.member.value) return;
      if (piece.reset) replace(this.pre, "--- log rotated ---\n");
      if (piece.text) {
        this.pre.append(document.createTextNode(piece.text));
        if (this.pre.textContent.length > KEEP_CHARS) {
          this.pre.textContent = this.pre.textContent.slice(-KEEP_CHARS);
        }
        if (this.follow.checked) this.pre.scrollTop = this.pre.scrollHeight;
      }
      this.offset = piece.next;
      replace(this.info, `${piece.next} of ${piece.size} bytes`);
      // more waiting: ask again at once; otherwise once a second while following
      const more = piece.next < piece.size;
      if (more || this.follow.checked) {
        this.timer = setTimeout(() => this.poll(), more ? 0 : POLL_MS);
      }
    } catch (e) {
      replace(this.info, e.message);
      this.timer = setTimeout(() => this.poll(), POLL_MS * 3);
    }
  }
}

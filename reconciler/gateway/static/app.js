// The console's shell: the API key (this tab only), the views, a refresh every 2 s.
import { h, replace } from "./dom.js";
import { renderCluster, renderDeployments, renderRevisions } from "./views.js";
import { renderPlots } from "./plots.js";
import { LogView } from "./logs.js";
import { Playground } from "./playground.js";

const KEY = "reconciler.apiKey";
const REFRESH_MS = 2000;

export const session = {
  get key() { return sessionStorage.getItem(KEY) || ""; },
  set key(v) { v ? sessionStorage.setItem(KEY, v) : sessionStorage.removeItem(KEY); },
  keysRequired: false,
};

export function authHeaders() {
  return session.key ? { Authorization: `Bearer ${session.key}` } : {};
}

export async function api(path) {
  const resp = await fetch(path, { headers: { Accept: "application/json", ...authHeaders() } });
  const body = await resp.json().catch(() => ({}));
  if (!resp.ok) throw new Error(body.error?.message || body.error || `${path}: ${resp.status}`);
  return body;
}

const banner = document.getElementById("banner");
export function say(text) {
  banner.hidden = !text;
  replace(banner, text || "");
}

const views = ["cluster", "deployments", "logs", "revisions", "plots", "playground"];
let logView = null;
let playground = null;
let timer = null;
let histories = {};

function current() {
  const v = location.hash.replace("#", "");
  return views.includes(v) ? v : "cluster";
}

async function histories_of(nodes) {
  const out = {};
  await Promise.all(nodes.filter((n) => n.reachable).map(async (n) => {
    try { out[n.name] = await api(`/console/api/history?node=${encodeURIComponent(n.name)}`); }
    catch (e) { out[n.name] = null; }
  }));
  return out;
}

async function refresh() {
  const view = current();
  const el = document.getElementById(`view-${view}`);
  if (session.keysRequired && !session.key) {
    say("This gateway needs an API key: paste one above (it stays in this tab).");
    return;
  }
  try {
    if (view === "playground") {
      playground ||= new Playground(el);
      await playground.show();
      say("");
      return;
    }
    const data = await api("/console/api/nodes");
    if (view === "deployments" || view === "plots" || view === "revisions") {
      histories = await histories_of(data.nodes);
    }
    if (view === "cluster") renderCluster(el, data.nodes);
    else if (view === "deployments") renderDeployments(el, data.nodes, histories);
    else if (view === "revisions") renderRevisions(el, data.nodes, histories);
    else if (view === "plots") renderPlots(el, data.nodes, histories);
    else if (view === "logs") {
      logView ||= new LogView(el);
      logView.nodes(data.nodes);
    }
    say("");
    replace(document.getElementById("updated"), `Updated ${new Date().toLocaleTimeString()}.`);
  } catch (e) {
    say(`Could not load: ${e.message}`);
  }
}

function show() {
  const view = current();
  for (const v of views) document.getElementById(`view-${v}`).hidden = v !== view;
  for (const a of document.querySelectorAll("#nav a")) {
    a.classList.toggle("active", a.dataset.view === view);
  }
  document.body.dataset.view = view;
  if (logView && view !== "logs") logView.pause();
  if (logView && view === "logs") logView.pickMember();
  clearInterval(timer);
  refresh().finally(() => { document.body.dataset.loaded = view; });
  if (view !== "playground") timer = setInterval(refresh, REFRESH_MS);
}

async function start() {
  document.getElementById("keyform").addEventListener("submit", (ev) => {
    ev.preventDefault();
    const input = document.getElementById("apikey");
    session.key = input.value.trim();
    input.value = "";
    if (playground) playground.models = null;
    show();
  });
  document.getElementById("forget").addEventListener("click", () => {
    session.key = "";
    show();
  });
  try {
    const info = await (await fetch("/console/api/info")).json();
    session.keysRequired = Boolean(info.keysRequired);
  } catch (e) {
    say(`The gateway did not answer: ${e.message}`);
  }
  window.addEventListener("hashchange", show);
  show();
}

start();

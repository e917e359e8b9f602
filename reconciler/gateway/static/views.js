// Cluster, Deployments and Revisions: tables built from the daemons' /status documents.
import { h, replace, table, badge, mib, ago, short } from "./dom.js";

function conditions(list) {
  return h("ul", { class: "conditions" }, (list || []).map((c) => h("li", {},
    badge(`${c.type} ${c.status}`, c.status === "True" ? (c.type === "Ready" ? "ok" : "warn")
      : (c.type === "Ready" ? "bad" : "off")),
    " ", h("b", {}, c.reason), " ", h("span", { class: "msg" }, c.message))));
}

// declared (Cluster document) against observed (NVML): count, model and memory
export function drift(gpus) {
  const out = [];
  const d = gpus.declared;
  const o = gpus.observed;
  if (!d || !o) return out;
  if (o.available && d.count !== o.count) out.push(`declared ${d.count} GPUs, observed ${o.count}`);
  for (const dev of o.devices || []) {
    if (d.model && !String(dev.name).toLowerCase().includes(String(d.model).toLowerCase())) {
      out.push(`GPU ${dev.index}: declared model ${d.model}, observed ${dev.name}`);
    }
    const gib = dev.memoryTotalMib / 1024;
    if (d.memoryGib && Math.abs(gib - d.memoryGib) > Math.max(1, d.memoryGib * 0.05)) {
      out.push(`GPU ${dev.index}: declared ${d.memoryGib} GiB, observed ${gib.toFixed(1)} GiB`);
    }
  }
  return out;
}

function gpuTable(gpus) {
  const o = gpus.observed || {};
  if (!o.available && o.error) return h("p", { class: "warn" }, `GPUs not readable: ${o.error}`);
  const rows = (o.devices || []).map((d) => h("tr", { dataset: { gpu: d.index } },
    h("td", {}, d.index), h("td", {}, d.name),
    h("td", {}, `${mib(d.memoryUsedMib)} / ${mib(d.memoryTotalMib)}`,
      h("div", { class: "bar" }, barFill(d.memoryUsedMib / Math.max(1, d.memoryTotalMib)))),
    h("td", {}, d.utilizationPct === null ? "–" : `${d.utilizationPct} %`),
    h("td", {}, d.temperatureC === null ? "–" : `${d.temperatureC} °C`),
    h("td", {}, badge(d.state, d.state === "foreign" || d.state === "unhealthy" ? "bad" : d.state)),
    h("td", {}, d.foreignPids.length ? badge(`foreign pids ${d.foreignPids.join(", ")}`, "bad") : "",
      d.healthy ? "" : badge(d.healthDetail || "unhealthy", "bad"))));
  if (!rows.length) return h("p", { class: "muted" }, "No GPUs on this node.");
  return table(["GPU", "model", "memory", "util", "temp", "state", "flags"], rows, { class: "gpus" });
}

function barFill(frac) {
  const fill = h("div", { class: "fill" });
  fill.style.width = `${Math.round(Math.min(1, Math.max(0, frac)) * 100)}%`;
  return fill;
}

export function renderCluster(el, nodes) {
  const cards = nodes.map((n) => {
    const s = n.status;
    if (!s) {
      return h("article", { class: "node unreachable", dataset: { node: n.name } },
        h("h2", {}, n.name, " ", badge("unreachable", "bad")),
        h("p", { class: "msg" }, `${n.url}: ${n.error}`));
    }
    const dr = drift(s.gpus);
    const g = s.gpus;
    return h("article", { class: "node", dataset: { node: n.name } },
      h("h2", {}, s.node, " ", badge("reachable", "ok"), g.simulated ? badge("simulated GPUs", "off") : ""),
      h("p", { class: "muted" }, `daemon pid ${s.daemon.pid}, up ${Math.round(s.daemon.uptimeSeconds)} s; `,
        `applied ${short(s.revisions.applied?.revision)} `,
        h("span", { class: "msg" }, s.revisions.applied?.subject || ""),
        `; observed ${ago(s.observedAt)}`),
      conditions(s.conditions),
      gpuTable(g),
      g.foreignPids.length ? h("p", { class: "bad" }, `Foreign GPU processes: ${g.foreignPids.join(", ")}`) : "",
      dr.length ? h("div", { class: "drift" }, h("b", {}, "Declared vs observed drift: "),
        h("ul", {}, dr.map((x) => h("li", {}, x)))) : "",
      (s.notes || []).length ? h("ul", { class: "notes" }, s.notes.map((x) => h("li", {}, x))) : "");
  });
  replace(el, h("h2", { class: "title" }, `Nodes (${nodes.filter((n) => n.reachable).length} of ${nodes.length} reachable)`), cards);
}

// one entry per replica, taken from the status of the node that leads it; the members of
// a multi-node replica are gathered from every node that runs one
function replicasOf(nodes) {
  const byKey = new Map();
  const members = new Map();
  for (const n of nodes) {
    const s = n.status;
    if (!s) continue;
    for (const r of s.replicas) {
      const key = `${r.deployment}/${r.index}`;
      if (r.members && r.members.length) {
        if (!members.has(key)) members.set(key, []);
        members.get(key).push(...r.members.map((m) => ({ ...m, node: s.node })));
      }
      const leads = r.nodes[0] === s.node;
      if (leads || !byKey.has(key)) byKey.set(key, { ...r, from: s.node, leads });
    }
  }
  return { byKey, members };
}

function memberChips(list, r) {
  if (!list || !list.length) return h("span", { class: "muted" }, "–");
  const multi = r.nodes.length > 1;
  return h("div", { class: "members" }, list.map((m) => {
    const role = m.role === "engine" ? (multi ? "driver" : "engine")
      : m.role === "ray-head" ? "head" : "worker";
    return h("div", { class: `member ${m.running ? m.health : "stopped"}` },
      h("b", {}, role), ` @ ${m.node}`, h("br"),
      `pid ${m.pid || "–"}`, m.gpus.length ? `, GPU ${m.gpus.join(",")}` : "",
      m.port ? `, :${m.port}` : "", h("br"), m.running ? m.health : "not running");
  }));
}

// when the leading node's daemon first saw the replica Ready (its in-memory history)
function since(histories, r, key) {
  const at = histories[r.from]?.readySince?.[key];
  return at ? ago(at) : "–";
}

export function renderDeployments(el, nodes, histories) {
  const deps = new Map();
  for (const n of nodes) for (const d of n.status?.deployments || []) deps.set(d.name, d);
  const { byKey, members } = replicasOf(nodes);
  const sections = [...deps.values()].sort((a, b) => a.name.localeCompare(b.name)).map((d) => {
    const reps = [...byKey.values()].filter((r) => r.deployment === d.name)
      .sort((a, b) => a.index - b.index);
    const rows = reps.map((r) => {
      const key = `${r.deployment}/${r.index}`;
      return h("tr", { dataset: { replica: key } },
        h("td", {}, r.index),
        h("td", { class: "state" }, badge(r.state)),
        h("td", { class: "reason" }, r.reason),
        h("td", {}, r.nodes.join(", ")),
        h("td", {}, r.gpus.join(", ") || "–"),
        h("td", {}, r.port ?? "–"),
        h("td", { class: "restarts" }, String(r.restarts)),
        h("td", { class: "since" }, since(histories, r, key)),
        h("td", { class: "hash" }, short(r.specHash)),
        h("td", {}, memberChips(members.get(key), r),
          r.ray ? h("div", { class: "muted" }, `Ray: ${r.ray.members.length} alive, ${r.ray.gpus} GPUs`,
            r.ray.lost.length ? `, lost ${r.ray.lost.join(", ")}` : "") : ""));
    });
    const p = d.parallelism;
    return h("article", { class: "deployment", dataset: { deployment: d.name } },
      h("h2", {}, d.name, " ", h("span", { class: "served" }, d.servedName),
        d.suspend ? badge("suspended", "off") : ""),
      h("p", { class: "muted" }, `${d.model} · TP ${p.tensor} × PP ${p.pipeline} × DP ${p.data} · `,
        `${d.replicas} replica(s) wanted · port ${d.port}`),
      rows.length ? table(["#", "state", "reason", "nodes", "GPUs", "port", "restarts",
        "ready since", "spec hash", "members"], rows, { class: "replicas" })
        : h("p", { class: "muted" }, "No replica placed."));
  });
  replace(el, h("h2", { class: "title" }, `Deployments (${deps.size})`),
    sections.length ? sections : h("p", { class: "muted" }, "No deployments."));
}

function commitLine(label, c) {
  return h("tr", {}, h("th", {}, label),
    h("td", { class: "hash" }, c ? short(c.revision) : "–"),
    h("td", { class: "msg" }, c?.subject || ""), h("td", {}, c?.author || ""),
    h("td", {}, c?.committedAt || ""));
}

export function renderRevisions(el, nodes, histories) {
  const cards = nodes.map((n) => {
    const s = n.status;
    if (!s) return h("article", { class: "node unreachable" }, h("h2", {}, n.name, " ", badge("unreachable", "bad")));
    const f = s.source.failure;
    const events = (histories[n.name]?.events || []).filter((e) => e.kind !== "replica").reverse();
    return h("article", { class: "revisions", dataset: { node: s.node } },
      h("h2", {}, s.node),
      h("p", { class: "muted" }, `${s.source.url} ${s.source.branch}:${s.source.path || "/"}; last fetch ${ago(s.source.lastFetchSuccessAt)}`),
      h("table", { class: "commits" }, h("tbody", {},
        commitLine("fetched", s.revisions.fetched), commitLine("attempted", s.revisions.attempted),
        commitLine("applied", s.revisions.applied), commitLine("last good", s.revisions.lastGood))),
      f ? h("div", { class: "refused" }, h("b", {}, `Refused ${short(f.revision)}: ${f.reason}`),
        h("p", { class: "msg" }, f.message),
        f.problems.length ? h("pre", { class: "problems" }, f.problems.join("\n")) : "") : "",
      events.length ? table(["when", "what", "revision", "detail"], events.map((e) => h("tr", { class: e.kind },
        h("td", {}, e.at), h("td", {}, badge(e.kind, e.kind === "refused" ? "bad" : e.kind === "applied" ? "ok" : "off")),
        h("td", { class: "hash" }, short(e.revision)),
        h("td", { class: "msg" }, e.kind === "refused" ? `${e.reason}: ${e.message}` : e.subject || "",
          e.problems?.length ? h("pre", { class: "problems" }, e.problems.join("\n")) : ""))),
      { class: "events" }) : h("p", { class: "muted" }, "No revision events in this daemon's memory yet."),
      (s.lastErrors || []).length ? h("div", {}, h("h3", {}, "Last errors"),
        h("pre", { class: "problems" }, s.lastErrors.map((e) => `${e.at} ${e.source}: ${e.message}`).join("\n"))) : "");
  });
  replace(el, h("h2", { class: "title" }, "Revisions"), cards);
}

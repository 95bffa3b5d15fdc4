// The pool's web console: a page over the REST API (the same calls as vgpuctl). The token
// stays in this tab's sessionStorage and goes only to this controller, in the Authorization
// header. Every value from the API is shown as text (never parsed as HTML). Nothing is loaded
// from elsewhere: the controller serves this file, the page and the style sheet itself.
"use strict";

const HISTORY_MS = 3600 * 1000;
const state = {
  token: sessionStorage.getItem("vgpu-token") || "",
  // uuid -> [{t, sm, mem, util}], fractions 0..1 (util: the GPU's own utilisation when the API
  // reports one). Kept in sessionStorage so a reload keeps the last hour.
  history: loadHistory(),
  errorSeq: 0,
};

function loadHistory() {
  try {
    return JSON.parse(sessionStorage.getItem("vgpu-history") || "{}") || {};
  } catch (_) {
    return {};
  }
}

function el(tag, text, cls) {
  const e = document.createElement(tag);
  if (text !== undefined && text !== null) e.textContent = String(text);
  if (cls) e.className = cls;
  return e;
}

function svg(tag, attrs) {
  const e = document.createElementNS("http://www.w3.org/2000/svg", tag);
  Object.entries(attrs || {}).forEach(([k, v]) => e.setAttribute(k, String(v)));
  return e;
}

// A short-lived note (an action done). Errors go to showError and stay.
function status(msg) {
  const s = document.getElementById("status");
  s.textContent = msg || "";
}

// An error stays on the page until its "dismiss" button is pressed: a refresh does not clear
// it. The same message twice in a row is shown once, with a count.
function showError(msg) {
  const list = document.getElementById("errors");
  const last = list.lastElementChild;
  if (last && last.dataset.msg === msg) {
    const n = Number(last.dataset.count) + 1;
    last.dataset.count = String(n);
    last.querySelector(".count").textContent = " (" + n + " times)";
    return;
  }
  const li = el("li", null, "error");
  li.dataset.msg = msg;
  li.dataset.count = "1";
  li.dataset.id = String(++state.errorSeq);
  li.appendChild(el("span", msg, "msg"));
  li.appendChild(el("span", "", "count"));
  const b = el("button", "dismiss", "dismiss");
  b.type = "button";
  b.addEventListener("click", () => li.remove());
  li.appendChild(b);
  list.appendChild(li);
}

async function api(method, path, body) {
  const r = await fetch("/v1" + path, {
    method,
    headers: Object.assign(
      { Authorization: "Bearer " + state.token },
      body ? { "Content-Type": "application/json" } : {}
    ),
    body: body ? JSON.stringify(body) : undefined,
  });
  const text = await r.text();
  let v = null;
  try {
    v = text ? JSON.parse(text) : null;
  } catch (_) {
    v = null;
  }
  if (!r.ok) {
    const e = v && v.error ? v.error.code + ": " + v.error.message : r.status + " " + r.statusText;
    throw new Error(method + " /v1" + path + ": " + e);
  }
  return v;
}

function bytes(n) {
  if (n === null || n === undefined) return "";
  const u = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0;
  while (n >= 1024 && i < u.length - 1) { n /= 1024; i++; }
  return (i ? n.toFixed(1) : n) + " " + u[i];
}

// A stable colour per VM, so one VM's parts look alike on every GPU.
function colour(key) {
  let h = 0;
  for (const c of key) h = (h * 31 + c.charCodeAt(0)) >>> 0;
  return "hsl(" + (h % 360) + ", 60%, 55%)";
}

function table(id, headers, rows) {
  const t = document.getElementById(id);
  t.replaceChildren();
  const head = el("tr");
  headers.forEach((h) => head.appendChild(el("th", h)));
  t.appendChild(head);
  rows.forEach((r) => {
    const tr = el("tr");
    const cells = r.cells || r;
    if (r.attrs) Object.entries(r.attrs).forEach(([k, v]) => tr.setAttribute(k, v));
    cells.forEach((c, i) => {
      const td = c instanceof Node ? c : el("td", c);
      // Narrow screens show each row as a card; the label names the column there.
      td.dataset.label = headers[i] || "";
      tr.appendChild(td);
    });
    t.appendChild(tr);
  });
  if (!rows.length) {
    const tr = el("tr");
    const td = el("td", "none");
    td.colSpan = headers.length;
    tr.appendChild(td);
    t.appendChild(tr);
  }
}

function button(label, action, cls) {
  const td = el("td");
  const b = el("button", label, cls);
  b.type = "button";
  b.addEventListener("click", async () => {
    try {
      await action();
      status(label + ": done");
    } catch (e) {
      showError(label + ": " + e.message);
    }
    refresh();
  });
  td.appendChild(b);
  return td;
}

function record(gpus) {
  const now = Date.now();
  const seen = new Set();
  gpus.forEach((g) => {
    seen.add(g.uuid);
    const h = (state.history[g.uuid] = (state.history[g.uuid] || []).filter(
      (p) => now - p.t <= HISTORY_MS
    ));
    h.push({
      t: now,
      sm: g.sm_capacity ? g.sm_allocated / g.sm_capacity : 0,
      mem: g.memory_bytes ? g.memory_allocated_bytes / g.memory_bytes : 0,
      util: typeof g.utilization_percent === "number" ? g.utilization_percent / 100 : null,
    });
  });
  Object.keys(state.history).forEach((u) => seen.has(u) || delete state.history[u]);
  try {
    sessionStorage.setItem("vgpu-history", JSON.stringify(state.history));
  } catch (_) {
    // Storage full: the history stays in memory only.
  }
}

// The last hour as a small chart: SMs allocated (solid), memory allocated (dashed), and the
// GPU's own utilisation where the API reports it (dotted).
function history(uuid) {
  const W = 300, H = 40;
  const s = svg("svg", {
    viewBox: "0 0 " + W + " " + H, preserveAspectRatio: "none", class: "history", role: "img",
  });
  s.appendChild(svg("rect", { x: 0, y: 0, width: W, height: H, class: "hist-bg" }));
  const pts = state.history[uuid] || [];
  const now = Date.now();
  const line = (key, cls) => {
    const p = pts
      .filter((q) => q[key] !== null && q[key] !== undefined)
      .map((q) => {
        const x = W - ((now - q.t) / HISTORY_MS) * W;
        const y = H - 2 - q[key] * (H - 4);
        return x.toFixed(1) + "," + y.toFixed(1);
      });
    if (p.length === 1) p.push(W + "," + p[0].split(",")[1]);
    if (p.length) s.appendChild(svg("polyline", { points: p.join(" "), class: cls }));
  };
  line("sm", "hist-sm");
  line("mem", "hist-mem");
  line("util", "hist-util");
  const t = svg("title");
  t.textContent = "last hour: SMs allocated (solid), memory allocated (dashed)" +
    (pts.some((q) => q.util !== null) ? ", GPU utilisation (dotted)" : "");
  s.appendChild(t);
  return s;
}

// One bar of a GPU (SMs or memory) cut into the slices that hold it. `other` is what slices
// this token cannot see hold (another project's), drawn as one grey part.
function bar(kind, total, parts, other) {
  const b = el("div", null, "map-bar map-" + kind);
  b.setAttribute("role", "img");
  parts.forEach((p) => {
    const seg = el("div", null, "slice");
    seg.style.width = (total ? (100 * p.amount) / total : 0) + "%";
    seg.style.background = colour(p.slice.vm);
    seg.dataset.allocation = p.slice.allocation_id;
    seg.dataset.vm = p.slice.vm;
    seg.dataset.project = p.slice.project;
    seg.title = p.slice.vm + " (" + p.slice.project + "): " + p.label;
    seg.appendChild(el("span", p.slice.vm, "slice-label"));
    b.appendChild(seg);
  });
  if (other > 0) {
    const seg = el("div", null, "slice other");
    seg.style.width = (total ? (100 * other) / total : 0) + "%";
    seg.title = "other projects";
    b.appendChild(seg);
  }
  return b;
}

function gpuCard(g, slices, allocById) {
  const mine = slices.filter((s) => s.gpu_uuid === g.uuid);
  const card = el("div", null, "gpu-card health-" + (g.health === "healthy" ? "healthy" : "unhealthy"));
  card.dataset.gpu = g.uuid;
  const head = el("div", null, "gpu-head");
  head.appendChild(el("span", null, "dot"));
  head.appendChild(el("strong", "GPU " + g.index + " on " + g.host));
  const simulated = g.sim && !/simulated/i.test(g.model) ? " (simulated)" : "";
  head.appendChild(el("span", g.model + simulated, "muted"));
  head.appendChild(el("span", g.health, "health"));
  card.appendChild(head);
  card.appendChild(el("div", g.uuid, "muted mono"));

  const smMine = mine.reduce((n, s) => n + s.sm_count, 0);
  const memMine = mine.reduce((n, s) => n + s.memory_bytes, 0);
  card.appendChild(el("div",
    "SMs: " + g.sm_allocated + " of " + g.sm_capacity + " allocated" +
      (g.oversubscription_ratio > 1 ? " (" + g.sm_count + " SMs × " + g.oversubscription_ratio + ")" : ""),
    "bar-label"));
  card.appendChild(bar("sm", g.sm_capacity,
    mine.map((s) => ({ slice: s, amount: s.sm_count, label: s.sm_count + " SMs" })),
    Math.max(0, g.sm_allocated - smMine)));
  card.appendChild(el("div",
    "memory: " + bytes(g.memory_allocated_bytes) + " of " + bytes(g.memory_bytes) + " allocated",
    "bar-label"));
  card.appendChild(bar("mem", g.memory_bytes,
    mine.map((s) => {
      const a = allocById[s.allocation_id];
      const used = a && typeof a.memory_used_bytes === "number" ? ", " + bytes(a.memory_used_bytes) + " used" : "";
      return { slice: s, amount: s.memory_bytes, label: bytes(s.memory_bytes) + used };
    }),
    Math.max(0, g.memory_allocated_bytes - memMine)));
  card.appendChild(history(g.uuid));
  return card;
}

function drawMap(gpus, slices, allocs) {
  const map = document.getElementById("map");
  map.replaceChildren();
  const allocById = {};
  allocs.forEach((a) => (allocById[a.id] = a));
  if (!gpus.length) map.appendChild(el("p", "No GPUs registered.", "muted"));
  gpus
    .slice()
    .sort((a, b) => (a.host + a.index).localeCompare(b.host + b.index))
    .forEach((g) => map.appendChild(gpuCard(g, slices, allocById)));
}

function memoryUsed(a) {
  // Filled by the controller once agents report a slice's device memory in use.
  return typeof a.memory_used_bytes === "number" ? bytes(a.memory_used_bytes) : "not reported";
}

let refreshing = false;

async function refresh() {
  if (!state.token) {
    status("Enter a token to see the pool.");
    return;
  }
  if (refreshing) return;
  refreshing = true;
  try {
    const who = await api("GET", "/whoami");
    document.getElementById("whoami").textContent =
      who.role + (who.project ? " (" + who.project + ")" : "");
    document.body.dataset.role = who.role;
    const [allocs, slices, gpus] = await Promise.all([
      api("GET", "/allocations"),
      api("GET", "/slices"),
      api("GET", "/gpus"),
    ]);
    record(gpus);
    drawMap(gpus, slices, allocs);
    table(
      "allocations",
      ["id", "project", "VM", "VM host", "GPU host", "slice", "memory", "memory used", "state", "socket", "remote", ""],
      allocs.map((a) => ({
        attrs: { "data-allocation": a.id, "data-vm": a.vm },
        cells: [
          a.id, a.project, a.vm, a.vm_host, a.gpu_host,
          a.profile ? (a.profile === 1 ? "1" : "1/" + a.profile) : a.sm_count + " SMs",
          bytes(a.memory_bytes), memoryUsed(a), a.state, el("td", a.socket_path, "mono"),
          a.remote ? a.endpoint : "no",
          button("release", () => api("DELETE", "/allocations/" + encodeURIComponent(a.id)), "release"),
        ],
      }))
    );
    const hostsSection = document.getElementById("hosts-section");
    if (who.role === "admin") {
      hostsSection.hidden = false;
      const hosts = await api("GET", "/hosts");
      table(
        "hosts",
        ["host", "health", "schedulable", "GPUs from", "GPUs", "allocations", "socket dir", "serve endpoint", ""],
        hosts.map((h) => ({
          attrs: { class: h.alive ? (h.schedulable ? "health-healthy" : "health-drained") : "health-unhealthy" },
          cells: [
            h.name, h.alive ? "alive" : "down (" + Math.round(h.last_seen_ms_ago / 1000) + " s)",
            h.schedulable ? "yes" : "no (drained)", h.gpu_source,
            h.gpus, h.allocations, el("td", h.socket_dir, "mono"), h.address + ":" + h.serve_port,
            h.schedulable
              ? button("drain", () => api("POST", "/hosts/" + encodeURIComponent(h.name) + "/drain"))
              : button("undrain", () => api("POST", "/hosts/" + encodeURIComponent(h.name) + "/undrain")),
          ],
        }))
      );
    } else {
      // Project tokens see the GPUs, their own slices and allocations; hosts are the admin's.
      hostsSection.hidden = true;
    }
    const s = document.getElementById("status");
    if (s.textContent.startsWith("Enter a token")) status("");
  } catch (e) {
    showError(e.message);
  } finally {
    refreshing = false;
  }
}

document.getElementById("login").addEventListener("submit", (ev) => {
  ev.preventDefault();
  state.token = document.getElementById("token").value.trim();
  sessionStorage.setItem("vgpu-token", state.token);
  status("");
  refresh();
});

document.getElementById("refresh").addEventListener("click", () => refresh());

document.getElementById("allocate").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  const f = new FormData(ev.target);
  const profile = String(f.get("profile") || "").trim();
  const slice = profile
    ? { profile }
    : { sm_count: Number(f.get("sm")), memory_bytes: Number(f.get("mem")) * 1024 ** 3 };
  try {
    const a = await api("POST", "/allocations", {
      vm: f.get("vm"),
      host: f.get("host"),
      slice,
      policy: { allow_remote: f.get("remote") === "on" },
    });
    status("allocated " + a.id + " on " + a.gpu_host + (a.remote ? " (remote)" : "") +
      "; socket " + a.socket_path);
  } catch (e) {
    showError("allocate: " + e.message);
  }
  refresh();
});

refresh();
setInterval(refresh, 5000);

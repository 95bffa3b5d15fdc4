// The pool's web console: a page over the REST API (the same calls as vgpuctl). The token
// stays in this tab's sessionStorage and goes only to this controller, in the Authorization
// header. Every value from the API is shown as text (never parsed as HTML).
"use strict";

const state = { token: sessionStorage.getItem("vgpu-token") || "" };

function el(tag, text, cls) {
  const e = document.createElement(tag);
  if (text !== undefined && text !== null) e.textContent = String(text);
  if (cls) e.className = cls;
  return e;
}

function status(msg, ok) {
  const s = document.getElementById("status");
  s.textContent = msg || "";
  s.className = ok ? "ok" : "";
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
  const v = text ? JSON.parse(text) : null;
  if (!r.ok) {
    const e = v && v.error ? v.error.code + ": " + v.error.message : r.status + " " + r.statusText;
    throw new Error(e);
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

function usage(used, total) {
  const cell = el("td");
  const box = el("span", null, "barbox");
  const bar = el("span", null, "bar");
  const pct = total ? Math.min(100, Math.round((100 * used) / total)) : 0;
  bar.style.width = pct + "%";
  box.appendChild(bar);
  cell.appendChild(box);
  cell.appendChild(document.createTextNode(pct + "%"));
  return cell;
}

function table(id, headers, rows) {
  const t = document.getElementById(id);
  t.replaceChildren();
  const head = el("tr");
  headers.forEach((h) => head.appendChild(el("th", h)));
  t.appendChild(head);
  rows.forEach((cells) => {
    const tr = el("tr");
    cells.forEach((c) => tr.appendChild(c instanceof Node ? c : el("td", c)));
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

function button(label, action) {
  const td = el("td");
  const b = el("button", label);
  b.type = "button";
  b.addEventListener("click", async () => {
    try {
      await action();
      status(label + ": done", true);
      refresh();
    } catch (e) {
      status(label + ": " + e.message);
    }
  });
  td.appendChild(b);
  return td;
}

async function refresh() {
  if (!state.token) {
    status("Enter a token to see the pool.");
    return;
  }
  try {
    const who = await api("GET", "/whoami");
    document.getElementById("whoami").textContent =
      who.role + (who.project ? " (" + who.project + ")" : "");
    const allocs = await api("GET", "/allocations");
    table(
      "allocations",
      ["id", "project", "VM", "VM host", "GPU host", "slice", "memory", "state", "remote", ""],
      allocs.map((a) => [
        a.id, a.project, a.vm, a.vm_host, a.gpu_host,
        a.profile ? "1/" + a.profile : a.sm_count + " SMs",
        bytes(a.memory_bytes), a.state, a.remote ? a.endpoint : "no",
        button("release", () => api("DELETE", "/allocations/" + encodeURIComponent(a.id))),
      ])
    );
    if (who.role !== "admin") {
      table("gpus", ["(the GPU and host views need the admin token)"], []);
      table("hosts", ["(the GPU and host views need the admin token)"], []);
      return;
    }
    const gpus = await api("GET", "/gpus");
    table(
      "gpus",
      ["GPU", "host", "model", "SMs used", "memory used", "slices", "mode", "health"],
      gpus.map((g) => [
        g.uuid, g.host, g.model,
        usage(g.sm_allocated, g.sm_capacity),
        usage(g.memory_allocated_bytes, g.memory_bytes),
        g.slices, g.slice_mode, g.health,
      ])
    );
    const hosts = await api("GET", "/hosts");
    table(
      "hosts",
      ["host", "alive", "schedulable", "GPUs from", "GPUs", "allocations", "serve endpoint", ""],
      hosts.map((h) => [
        h.name, h.alive ? "yes" : "no", h.schedulable ? "yes" : "no (drained)", h.gpu_source,
        h.gpus, h.allocations, h.address + ":" + h.serve_port,
        h.schedulable
          ? button("drain", () => api("POST", "/hosts/" + encodeURIComponent(h.name) + "/drain"))
          : button("undrain", () => api("POST", "/hosts/" + encodeURIComponent(h.name) + "/undrain")),
      ])
    );
    status("");
  } catch (e) {
    status(e.message);
  }
}

document.getElementById("login").addEventListener("submit", (ev) => {
  ev.preventDefault();
  state.token = document.getElementById("token").value.trim();
  sessionStorage.setItem("vgpu-token", state.token);
  refresh();
});

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
    status("allocated " + a.id + " on " + a.gpu_host + (a.remote ? " (remote)" : ""), true);
    refresh();
  } catch (e) {
    status("allocate: " + e.message);
  }
});

refresh();
setInterval(refresh, 5000);

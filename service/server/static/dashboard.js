// The run dashboard: the deployment, its DAG, a form that invokes it, and recent runs.
// Everything comes from the JSON API (/info, /ready, /invoke, /runs); nothing is built
// on the server, so the page works unchanged for any pipeline.

import { api, json } from "./api.js";

const POLL_MS = 2000;
const PAGE_SIZE = 50;
const SVG = "http://www.w3.org/2000/svg";

const $ = (id) => document.getElementById(id);

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs)) {
    if (name === "text") node.textContent = value;
    else if (name === "class") node.className = value;
    else node.setAttribute(name, value);
  }
  node.append(...children);
  return node;
}

function svg(tag, attrs = {}) {
  const node = document.createElementNS(SVG, tag);
  for (const [name, value] of Object.entries(attrs)) node.setAttribute(name, value);
  return node;
}

function formatSeconds(seconds) {
  if (seconds == null) return "";
  if (seconds < 1) return `${(seconds * 1000).toFixed(seconds < 0.01 ? 2 : 0)} ms`;
  if (seconds < 60) return `${seconds.toFixed(2)} s`;
  return formatUptime(seconds);
}

function formatUptime(seconds) {
  const s = Math.floor(seconds);
  if (s < 60) return `${s}s`;
  const parts = [];
  if (s >= 86400) parts.push(`${Math.floor(s / 86400)}d`);
  if (s >= 3600) parts.push(`${Math.floor((s % 86400) / 3600)}h`);
  parts.push(`${String(Math.floor((s % 3600) / 60)).padStart(2, "0")}m`);
  parts.push(`${String(s % 60).padStart(2, "0")}s`);
  return parts.join(" ");
}

function formatTime(iso) {
  return iso ? new Date(iso).toLocaleString() : "";
}

function compact(value) {
  return value == null ? "" : JSON.stringify(value);
}

function describeError(error) {
  if (!error) return "";
  const step = error.step ? ` (step ${error.step})` : "";
  return `${error.type}: ${error.message}${step}`;
}

// -- deployment -------------------------------------------------------------------

const state = { info: null, infoLoadedAt: 0 };

function showDeployment(info) {
  state.info = info;
  state.infoLoadedAt = performance.now();
  document.title = `${info.deployment_name} · pipeserve`;
  $("deployment-name").textContent = info.deployment_name;
  $("pipeline-name").textContent = info.pipeline_name;
  $("pipeline-version").textContent = info.version;
  $("pipeserve-version").textContent = info.pipeserve_version;
  $("description").textContent = info.description || "";
  tickUptime();
}

function tickUptime() {
  const info = state.info;
  if (!info || info.uptime == null) return;
  const uptime = info.uptime + (performance.now() - state.infoLoadedAt) / 1000;
  $("uptime").textContent = formatUptime(uptime);
  $("uptime").title = `since ${formatTime(info.started_at)}`;
}

async function refreshReadiness() {
  let status;
  try {
    const response = await fetch("ready", { headers: { Accept: "application/json" } });
    status = (await json(response)).status || `HTTP ${response.status}`;
  } catch {
    status = "unreachable";
  }
  const badge = $("readiness");
  badge.textContent = status;
  badge.className = `badge status-${status === "ready" ? "succeeded" : "failed"}`;
}

// -- the DAG ----------------------------------------------------------------------

// Columns by topological level (a step sits one column right of its latest upstream).
function layout(steps) {
  const level = new Map();
  const byName = new Map(steps.map((s) => [s.name, s]));
  const visit = (name, seen = new Set()) => {
    if (level.has(name)) return level.get(name);
    if (seen.has(name)) return 0; // a cycle cannot load; stay finite regardless
    seen.add(name);
    const ups = byName.get(name)?.upstream || [];
    const value = ups.length ? 1 + Math.max(...ups.map((u) => visit(u, seen))) : 0;
    level.set(name, value);
    return value;
  };
  const columns = [];
  for (const step of steps) {
    const l = visit(step.name);
    (columns[l] ||= []).push(step);
  }
  return columns;
}

function drawDag(info) {
  const columns = layout(info.steps);
  const longest = Math.max(8, ...info.steps.map((s) => s.name.length));
  const w = Math.min(260, Math.max(130, longest * 8 + 24));
  const h = 46, gapX = 56, gapY = 18, pad = 10;
  const tallest = Math.max(1, ...columns.map((c) => c.length));
  const width = pad * 2 + columns.length * w + (columns.length - 1) * gapX;
  const height = pad * 2 + tallest * h + (tallest - 1) * gapY;
  const root = svg("svg", {
    viewBox: `0 0 ${width} ${height}`, width, height, role: "img", id: "dag-svg",
  });
  const defs = svg("defs");
  const marker = svg("marker", {
    id: "arrow", viewBox: "0 0 10 10", refX: 10, refY: 5,
    markerWidth: 7, markerHeight: 7, orient: "auto-start-reverse",
  });
  marker.append(svg("path", { d: "M 0 0 L 10 5 L 0 10 z", class: "arrow" }));
  defs.append(marker);
  root.append(defs);

  const position = new Map();
  columns.forEach((column, i) => {
    const offset = ((tallest - column.length) * (h + gapY)) / 2;
    column.forEach((step, j) => {
      position.set(step.name, { x: pad + i * (w + gapX), y: pad + offset + j * (h + gapY) });
    });
  });
  const edges = svg("g", { class: "edges" });
  for (const [from, to] of info.edges) {
    const a = position.get(from), b = position.get(to);
    if (!a || !b) continue;
    const x1 = a.x + w, y1 = a.y + h / 2, x2 = b.x, y2 = b.y + h / 2, mid = (x1 + x2) / 2;
    edges.append(svg("path", {
      d: `M ${x1} ${y1} C ${mid} ${y1}, ${mid} ${y2}, ${x2} ${y2}`,
      class: "edge", "marker-end": "url(#arrow)", "data-from": from, "data-to": to,
    }));
  }
  root.append(edges);
  for (const step of info.steps) {
    const { x, y } = position.get(step.name);
    const node = svg("g", { class: "node", "data-step": step.name, transform: `translate(${x} ${y})` });
    const title = svg("title");
    const outputs = step.outputs.length ? `outputs: ${step.outputs.join(", ")}` : "no outputs";
    const params = step.parameters.length ? `; parameters: ${step.parameters.join(", ")}` : "";
    title.textContent = `${step.name} (${step.is_async ? "async" : "sync"}): ${outputs}${params}`;
    const label = svg("text", { x: 12, y: 20, class: "name" });
    label.textContent = step.name;
    const sub = svg("text", { x: 12, y: 36, class: "sub" });
    sub.textContent = `${step.is_async ? "async" : "def"} · ${step.outputs.join(", ") || "—"}`;
    node.append(title, svg("rect", { width: w, height: h, rx: 7 }), label, sub);
    root.append(node);
  }
  $("dag").replaceChildren(root);
}

// Colour the DAG's nodes by one run's step statuses.
function paintDag(steps) {
  for (const node of document.querySelectorAll("#dag .node")) {
    const record = steps?.[node.dataset.step];
    node.setAttribute("class", `node${record ? ` step-${record.status}` : ""}`);
  }
}

// -- the form ---------------------------------------------------------------------

function resolve(schema, root) {
  let s = schema || {};
  for (let i = 0; s.$ref && i < 32; i++) {
    s = s.$ref.replace(/^#\//, "").split("/").reduce((o, k) => o?.[k], root) || {};
  }
  if (s.allOf?.length === 1) return resolve(s.allOf[0], root);
  return s;
}

// What widget a parameter gets: its kind, and whether null is allowed.
function kindOf(schema, root) {
  let s = resolve(schema, root);
  let nullable = false;
  const union = s.anyOf || s.oneOf;
  if (union) {
    const rest = union.filter((x) => resolve(x, root).type !== "null");
    nullable = rest.length < union.length;
    if (rest.length !== 1) return { kind: "json", schema: s, nullable };
    s = resolve(rest[0], root);
  }
  if (s.enum || "const" in s) return { kind: "enum", schema: s, nullable };
  const kind = { string: "string", integer: "integer", number: "number", boolean: "boolean" }[s.type];
  return { kind: kind || "json", schema: s, nullable };
}

function buildForm(info) {
  const root = info.parameters_schema;
  const required = new Set(root.required || []);
  const fields = [];
  const container = $("parameter-fields");
  container.replaceChildren();
  for (const [name, raw] of Object.entries(root.properties || {})) {
    const { kind, schema, nullable } = kindOf(raw, root);
    const hasDefault = "default" in raw;
    const fallback = hasDefault ? raw.default : schema.default;
    const id = `param-${name}`;
    let input;
    if (kind === "boolean") {
      input = el("input", { type: "checkbox", id, name });
      input.checked = Boolean(fallback);
    } else if (kind === "enum") {
      input = el("select", { id, name });
      const values = schema.enum || [schema.const];
      if (!hasDefault || nullable) input.append(el("option", { value: "", text: "—" }));
      for (const value of values) {
        input.append(el("option", { value: JSON.stringify(value), text: String(value) }));
      }
      if (hasDefault && fallback !== null) input.value = JSON.stringify(fallback);
    } else if (kind === "json") {
      input = el("textarea", { id, name, rows: 3, spellcheck: "false", class: "json" });
      if (hasDefault) input.value = JSON.stringify(fallback);
    } else {
      const numeric = kind === "integer" || kind === "number";
      input = el("input", { id, name, type: numeric ? "number" : "text" });
      if (numeric) {
        input.step = kind === "integer" ? "1" : "any";
        if ("minimum" in schema) input.min = schema.minimum;
        if ("maximum" in schema) input.max = schema.maximum;
      }
      if (hasDefault && fallback !== null) input.value = String(fallback);
    }
    const hint = [kind === "json" ? `JSON (${schema.type || "any"})` : kind];
    if (required.has(name)) hint.push("required");
    if (schema.description) hint.push(schema.description);
    const label = el("label", { class: `field kind-${kind}`, for: id },
      el("span", { text: name + (required.has(name) ? " *" : "") }), input,
      el("small", { text: hint.join(" · ") }));
    container.append(label);
    fields.push({ name, kind, input, emptyIsText: typeof fallback === "string" });
  }
  if (!fields.length) container.append(el("p", { class: "note", text: "This pipeline takes no parameters." }));
  const until = $("until");
  for (const step of info.steps) until.append(el("option", { value: step.name, text: step.name }));
  return fields;
}

// The `parameters` of the request; a field left empty is left out (its default applies).
function readParameters(fields) {
  const parameters = {};
  for (const field of fields) {
    const { input, kind, name } = field;
    if (kind === "boolean") {
      parameters[name] = input.checked;
    } else if (kind === "enum") {
      if (input.value !== "") parameters[name] = JSON.parse(input.value);
    } else if (kind === "json") {
      const text = input.value.trim();
      if (text === "") continue;
      try {
        parameters[name] = JSON.parse(text);
      } catch (err) {
        throw new Error(`parameter '${name}' is not valid JSON: ${err.message}`);
      }
    } else if (kind === "integer" || kind === "number") {
      if (input.value !== "") parameters[name] = Number(input.value);
      else if (input.validity.badInput) throw new Error(`parameter '${name}' is not a number`);
    } else if (input.value !== "" || field.emptyIsText) {
      // Emptied, a text field whose default is text sends "": leaving it out would bring
      // the default back. With no default (or null), it is left out.
      parameters[name] = input.value;
    }
  }
  return parameters;
}

function showOutcome(body, status) {
  const result = $("result");
  const ok = body.success === true || body.status === "succeeded";
  const run = body.metadata?.run_id || body.run_id;
  const timing = body.execution_time ?? body.duration;
  const head = el("div", { class: `outcome ${ok ? "ok" : "failed"}`, id: "outcome" });
  if (ok) {
    head.append(el("strong", { text: "Succeeded" }),
      timing != null ? ` in ${formatSeconds(timing)}` : "");
  } else if (body.error) {
    head.append(el("strong", { text: body.error.type, class: "error-type" }));
    if (body.error.step) head.append(" in step ", el("code", { text: body.error.step, class: "error-step" }));
    head.append(": ", el("span", { text: body.error.message, class: "error-message" }));
  } else {
    head.append(el("strong", { text: body.status || `HTTP ${status}` }));
  }
  if (status) head.append(el("span", { class: "http", text: ` HTTP ${status}` }));
  const parts = [head];
  if (run) parts.push(el("p", { class: "run-id" }, "run ", el("code", { text: run })));
  if (body.error?.errors?.length) {
    parts.push(el("ul", { class: "field-errors" },
      ...body.error.errors.map((e) => el("li", { text: `${e.loc.join(".")}: ${e.msg}` }))));
  }
  if (ok && body.outputs) {
    parts.push(el("pre", { id: "outputs", text: JSON.stringify(body.outputs, null, 2) }));
  }
  result.replaceChildren(...parts);
  paintDag(body.metadata?.steps || body.steps);
}

function showProblem(message) {
  $("result").replaceChildren(el("div", { class: "outcome failed", id: "outcome" },
    el("strong", { text: "Not sent" }), ": ", el("span", { class: "error-message", text: message })));
}

async function invoke(fields) {
  const button = $("invoke-button");
  let body;
  try {
    body = { parameters: readParameters(fields) };
  } catch (err) {
    showProblem(err.message);
    return;
  }
  if ($("until").value) body.until = $("until").value;
  if ($("timeout").value) body.timeout = Number($("timeout").value);
  button.disabled = true;
  $("result").replaceChildren(el("p", { class: "note", text: "Running…" }));
  try {
    const response = await api("invoke", { method: "POST", body });
    showOutcome(await json(response), response.status);
  } catch (err) {
    showProblem(`the server could not be reached (${err.message})`);
  } finally {
    button.disabled = false;
  }
  runs.refresh();
}

// -- runs -------------------------------------------------------------------------

// The newest page is polled; older pages are loaded on demand ("more") and kept, as are
// runs that new ones push off the newest page meanwhile. Rows are rebuilt only when what
// they show changed, so a long list costs nothing while idle.
const runs = {
  latest: [],
  kept: new Map(),
  cursor: null, // of the page after the oldest run loaded
  browsing: false, // older pages were loaded
  available: true,
  signature: "",
  generation: 0, // bumped by a new status filter: answers to older queries are dropped

  query(cursor) {
    const params = new URLSearchParams({ limit: PAGE_SIZE });
    if ($("runs-status").value) params.set("status", $("runs-status").value);
    if (cursor) params.set("cursor", cursor);
    return `runs?${params}`;
  },

  async fetchPage(cursor) {
    const generation = this.generation;
    const response = await api(this.query(cursor));
    const body = await json(response);
    if (generation !== this.generation) return null;
    if (response.status === 404 || response.status === 405) {
      this.available = false;
      $("runs-note").textContent = "This server keeps no run history.";
      $("runs").hidden = true;
      return null;
    }
    if (!response.ok) {
      $("runs-note").textContent = `Could not list runs: ${describeError(body.error)}`;
      return null;
    }
    $("runs-note").textContent = "";
    return body;
  },

  async refresh() {
    if (!this.available) return;
    const page = await this.fetchPage(null);
    if (!page) return;
    if (this.browsing) {
      for (const run of this.latest) this.kept.set(run.run_id, run);
    } else {
      this.cursor = page.next_cursor;
    }
    this.latest = page.runs;
    for (const run of page.runs) this.kept.delete(run.run_id);
    this.render();
  },

  async more() {
    if (!this.cursor) return;
    const page = await this.fetchPage(this.cursor);
    if (!page) return;
    this.browsing = true;
    for (const run of page.runs) this.kept.set(run.run_id, run);
    this.cursor = page.next_cursor;
    this.render();
  },

  reset() {
    this.generation += 1;
    this.latest = [];
    this.kept.clear();
    this.cursor = null;
    this.browsing = false;
    this.signature = "";
    this.refresh();
  },

  rows() {
    const latestIds = new Set(this.latest.map((r) => r.run_id));
    const rest = [...this.kept.values()].filter((r) => !latestIds.has(r.run_id));
    rest.sort((a, b) => (a.created_at < b.created_at ? 1 : a.created_at > b.created_at ? -1 : 0));
    return [...this.latest, ...rest];
  },

  render() {
    const rows = this.rows();
    $("runs-more").hidden = !this.cursor;
    const signature = rows.map((r) => `${r.run_id}:${r.status}:${r.updated_at}`).join("|");
    if (signature === this.signature) return;
    this.signature = signature;
    const body = document.createDocumentFragment();
    for (const run of rows) {
      const tr = el("tr", { "data-run-id": run.run_id, class: `run status-${run.status}` },
        el("td", {}, el("span", { class: `badge status-${run.status}`, text: run.status })),
        el("td", {}, el("code", { text: run.run_id.slice(0, 8), title: run.run_id })),
        el("td", { text: run.kind || "" }),
        el("td", { text: formatTime(run.created_at), title: run.created_at || "" }),
        el("td", { text: formatSeconds(run.duration) }),
        el("td", { class: "params", text: compact(run.parameters_used), title: compact(run.parameters_used) }),
        el("td", { class: "error", text: describeError(run.error) }));
      body.append(tr);
    }
    if (!rows.length) body.append(el("tr", {}, el("td", { colspan: 7, class: "note", text: "No runs yet." })));
    $("runs").tBodies[0].replaceChildren(body);
  },

  async show(runId) {
    const response = await api(`runs/${encodeURIComponent(runId)}`);
    const body = await json(response);
    if (response.ok) showOutcome(body, null);
    else showProblem(describeError(body.error));
  },
};

// -- start ------------------------------------------------------------------------

async function start() {
  const response = await api("info");
  const info = await json(response);
  if (!response.ok) {
    showProblem(`GET /info answered ${response.status}: ${describeError(info.error)}`);
    return;
  }
  showDeployment(info);
  drawDag(info);
  const fields = buildForm(info);
  $("invoke-form").addEventListener("submit", (event) => {
    event.preventDefault();
    invoke(fields);
  });
  $("runs-more").addEventListener("click", () => runs.more());
  $("runs-status").addEventListener("change", () => runs.reset());
  $("runs").tBodies[0].addEventListener("click", (event) => {
    const row = event.target.closest("tr[data-run-id]");
    if (row) runs.show(row.dataset.runId);
  });
  setInterval(tickUptime, 1000);
  const poll = async () => {
    if (!document.hidden) await Promise.allSettled([refreshReadiness(), runs.refresh()]);
    setTimeout(poll, POLL_MS);
  };
  await poll();
  document.body.dataset.loaded = "true";
}

start();

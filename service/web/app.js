// The web view of LLFC Align: plain JavaScript over the JSON API (docs/API.md), no build step.
//
// "/" lists the owner's jobs (what each compared, by the models' names, its method, barriers and
// duration) and refreshes while any is queued or running; "/jobs/{id}" shows one job, its
// artifacts to download, and for a succeeded analyze job its plots, metric tables and the result
// as CSV (GET /v1/jobs/{id}/result.csv, the CSV `llfc results` writes). Every request carries
// the API key from sessionStorage when there is one, images included (fetched as blobs), because
// a plain <img src> cannot send an Authorization header. The key lives only as long as the tab:
// sessionStorage is not shared with other tabs and is gone when the tab closes. Downloads are
// fetched the same way and handed to the browser through an object URL. "set API key" shows only
// when GET /v1/config says the service asks for one.
"use strict";

const KEY_STORAGE = "llfc.apiKey";
const ACTIVE_REFRESH_MS = 2000;
const IDLE_REFRESH_MS = 10000;
const ACTIVE_STATUSES = new Set(["queued", "running"]);
const PLOTS = [
  ["lmc", "Linear mode connectivity: loss and error along the path"],
  ["llfc", "LLFC per layer: E[1 − cos_α] against the A–B baseline E[1 − cos_AB]"],
  ["conditions", "Condition I (weak additivity) and Condition II (commutativity) per layer"],
];

const SWEEP_PLOTS = [
  ["sweep", "Every pair of models: loss barrier, error barrier and LLFC distance at α = 0.5"],
];
const SWEEP_METRICS = [
  ["loss_barrier", "loss barrier", formatNumber],
  ["error_barrier", "error barrier", formatPercent],
  ["llfc_distance", "LLFC distance at α = 0.5 (mean over layers of E[1 − cos])", formatNumber],
];

class AuthNeeded extends Error {}

class ProblemDetail extends Error {
  constructor(status, detail) {
    super(detail);
    this.status = status;
  }
}

// --- Small DOM helpers: text always goes in as text, never as HTML. --------------------------

function h(tag, props = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(props)) {
    if (value === null || value === undefined || value === false) continue;
    if (name === "className") node.className = value;
    else if (name === "dataset") Object.assign(node.dataset, value);
    // Through the CSSOM: the Content-Security-Policy refuses style attributes set as markup.
    else if (name === "style") node.style.cssText = value;
    else if (name.startsWith("on")) node.addEventListener(name.slice(2), value);
    else node.setAttribute(name, value === true ? "" : String(value));
  }
  for (const child of children.flat(Infinity)) {
    if (child === null || child === undefined || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

function formatNumber(value) {
  if (value === null || value === undefined || Number.isNaN(value)) return "n/a";
  if (Number.isInteger(value) && Math.abs(value) < 1e6) return String(value);
  const size = Math.abs(value);
  if (size < 1e-3 || size >= 1e5) return value.toExponential(2);
  return value.toPrecision(3);
}

function formatPercent(value) {
  return value === null || value === undefined ? "n/a" : `${(100 * value).toFixed(1)}%`;
}

function formatTime(text) {
  return text ? new Date(text).toLocaleString() : "—";
}

function formatDuration(seconds) {
  if (seconds < 60) return `${seconds.toFixed(1)} s`;
  const minutes = Math.floor(seconds / 60);
  if (minutes < 60) return `${minutes} min ${Math.round(seconds - 60 * minutes)} s`;
  return `${Math.floor(minutes / 60)} h ${minutes % 60} min`;
}

// --- The API, with the key when there is one. --------------------------------------------------

// Whether the service asks for a key: GET /v1/config says; the key control shows once it has.
let authRequired = true;

function apiKey() {
  return window.sessionStorage.getItem(KEY_STORAGE) || "";
}

async function loadConfig() {
  try {
    const config = await api("/v1/config");
    authRequired = config.auth !== false;
  } catch (error) {
    // A service from before /v1/config: keep offering the key.
  }
  renderKeyStatus();
}

async function api(path, { method = "GET", as = "json" } = {}) {
  const headers = {};
  const key = apiKey();
  if (key) headers.Authorization = `Bearer ${key}`;
  const response = await fetch(path, { method, headers });
  if (response.status === 401) {
    const problem = await response.json().catch(() => ({}));
    showKeyPanel(key ? "That key was refused: " + (problem.detail || "") : "");
    throw new AuthNeeded(problem.detail || "An API key is needed.");
  }
  if (!response.ok) {
    const problem = await response.json().catch(() => ({}));
    throw new ProblemDetail(response.status, problem.detail || `HTTP ${response.status}`);
  }
  return as === "blob" ? response.blob() : response.json();
}

function showKeyPanel(message) {
  document.getElementById("key-panel").hidden = false;
  document.getElementById("key-message").textContent = message;
  document.getElementById("key-input").focus();
}

function renderKeyStatus() {
  const box = document.getElementById("key-status");
  box.replaceChildren();
  box.dataset.auth = authRequired ? "on" : "off";
  if (!authRequired) return;
  if (apiKey()) {
    box.append(
      h("span", { className: "muted" }, "API key saved "),
      h("button", { type: "button", className: "link", onclick: forgetKey }, "forget"),
    );
  } else {
    box.append(
      h("button", { type: "button", className: "link", onclick: () => showKeyPanel("") },
        "set API key"),
    );
  }
}

function forgetKey() {
  window.sessionStorage.removeItem(KEY_STORAGE);
  renderKeyStatus();
  route();
}

function saveKey(event) {
  event.preventDefault();
  const input = document.getElementById("key-input");
  const key = input.value.trim();
  if (!key) return;
  window.sessionStorage.setItem(KEY_STORAGE, key);
  input.value = "";
  document.getElementById("key-panel").hidden = true;
  renderKeyStatus();
  route();
}

// --- Routing and refresh. ------------------------------------------------------------------------

let refreshTimer = null;
let viewGeneration = 0;
let objectUrls = [];

function stopRefresh() {
  if (refreshTimer !== null) window.clearTimeout(refreshTimer);
  refreshTimer = null;
}

function releaseImages() {
  for (const url of objectUrls) URL.revokeObjectURL(url);
  objectUrls = [];
}

function route() {
  stopRefresh();
  releaseImages();
  viewGeneration += 1;
  const match = window.location.pathname.match(/^\/jobs\/([^/]+)\/?$/);
  if (match) showJob(decodeURIComponent(match[1]), viewGeneration);
  else showJobs(viewGeneration);
}

function navigate(event) {
  const link = event.target.closest("a[data-internal]");
  if (!link || event.metaKey || event.ctrlKey || event.shiftKey || event.button !== 0) return;
  event.preventDefault();
  window.history.pushState({}, "", link.getAttribute("href"));
  route();
}

function scheduleRefresh(generation, delay, refresh) {
  stopRefresh();
  refreshTimer = window.setTimeout(() => {
    if (generation === viewGeneration) refresh(generation);
  }, delay);
}

function setView(...nodes) {
  document.getElementById("view").replaceChildren(...nodes.filter((node) => node));
}

function showError(error) {
  if (error instanceof AuthNeeded) {
    setView(h("p", { className: "notice" }, error.message));
  } else {
    setView(h("p", { className: "error", role: "alert" }, error.message));
  }
}

// --- Pieces shared by both pages. ---------------------------------------------------------------

function statusBadge(status) {
  return h("span", { className: `badge status-${status}` }, status);
}

function progressBar(progress, status) {
  const percent = Math.round(100 * (progress.fraction || 0));
  return h(
    "div",
    { className: "progress-cell" },
    h(
      "div",
      {
        className: `bar status-${status}`,
        role: "progressbar",
        "aria-valuemin": 0,
        "aria-valuemax": 100,
        "aria-valuenow": percent,
      },
      h("div", { className: "fill", style: `width: ${percent}%` }),
    ),
    h("span", { className: "stage" }, `${percent}%`, progress.stage ? ` · ${progress.stage}` : ""),
  );
}

function jobLink(id) {
  return h("a", { href: `/jobs/${encodeURIComponent(id)}`, "data-internal": true }, id);
}

// A checkpoint's name, asked for once per id; null while unknown (deleted, or the request failed:
// then it is asked again next time).
const checkpointNames = new Map();

function checkpointName(id) {
  if (!checkpointNames.has(id)) {
    const name = api(`/v1/checkpoints/${encodeURIComponent(id)}`).then(
      (checkpoint) => checkpoint.name,
      () => {
        checkpointNames.delete(id);
        return null;
      },
    );
    checkpointNames.set(id, name);
  }
  return checkpointNames.get(id);
}

// A model named by its checkpoint's name once known, by its id until then (and in the tooltip).
function modelName(id) {
  const node = h("span", { className: "model", title: id, dataset: { checkpointId: id } }, id);
  checkpointName(id).then((name) => {
    if (name) node.textContent = name;
  });
  return node;
}

// A link that downloads `path` with the key: fetched as a blob, then saved through an object URL.
function downloadLink(path, filename, text) {
  return h("a", {
    href: path,
    download: filename,
    className: "download",
    onclick: (event) => {
      event.preventDefault();
      download(path, filename, event.currentTarget);
    },
  }, text);
}

async function download(path, filename, link) {
  try {
    const blob = await api(path, { as: "blob" });
    const url = URL.createObjectURL(blob);
    const anchor = h("a", { href: url, download: filename });
    document.body.append(anchor);
    anchor.click();
    anchor.remove();
    window.setTimeout(() => URL.revokeObjectURL(url), 60000);
  } catch (error) {
    link.after(h("span", { className: "error" }, ` (could not download: ${error.message})`));
  }
}

// --- The jobs table. ------------------------------------------------------------------------------

async function showJobs(generation) {
  let page;
  try {
    page = await api("/v1/jobs?limit=100");
  } catch (error) {
    if (generation === viewGeneration) showError(error);
    return;
  }
  if (generation !== viewGeneration) return;
  const jobs = page.items;
  const rows = jobs.map((job) =>
    h(
      "tr",
      { dataset: { jobId: job.id, status: job.status } },
      h("td", { className: "mono" }, jobLink(job.id)),
      h("td", {}, job.kind),
      h("td", { className: "compared" }, compared(job)),
      h("td", {}, method(job)),
      h("td", { className: "nowrap" }, lossBarriers(job)),
      h("td", {}, statusBadge(job.status)),
      h("td", {}, progressBar(job.progress, job.status)),
      h("td", { className: "nowrap" }, duration(job)),
      h("td", { className: "nowrap" }, formatTime(job.created_at)),
    ),
  );
  const active = jobs.some((job) => ACTIVE_STATUSES.has(job.status));
  setView(
    h("h1", {}, "Jobs"),
    h(
      "p",
      { className: "muted" },
      active
        ? "Refreshing every 2 seconds while jobs are queued or running."
        : "Submit jobs with the llfc command or the API; this list refreshes by itself.",
    ),
    jobs.length
      ? h(
          "table",
          { id: "jobs-table", className: "data" },
          h(
            "thead",
            {},
            h("tr", {}, JOB_COLUMNS.map((title) => h("th", {}, title))),
          ),
          h("tbody", {}, rows),
        )
      : h("p", { id: "no-jobs" }, "No jobs yet. Try: llfc demo"),
    page.next_cursor ? h("p", { className: "muted" }, "Showing the newest 100 jobs.") : null,
  );
  scheduleRefresh(generation, active ? ACTIVE_REFRESH_MS : IDLE_REFRESH_MS, showJobs);
}

const JOB_COLUMNS = [
  "id", "kind", "compared", "method", "loss barrier", "status", "progress", "duration", "created",
];

// What the job compared: A and B by name (a train job: its arch and modes), and on what data.
function compared(job) {
  const parts = [];
  if (job.model_a && job.model_b) {
    parts.push(modelName(job.model_a), " vs ", modelName(job.model_b));
  } else if (job.models) {
    parts.push(job.kind === "merge" ? `${job.models.length} models merged`
      : `${job.models.length} models, every pair`);
  } else if (job.kind === "train" && job.params.arch) {
    parts.push(`${job.params.num_modes} × ${job.params.arch.name}`);
  }
  if (job.dataset) parts.push(h("span", { className: "muted" }, ` on ${job.dataset}`));
  return parts;
}

function method(job) {
  const params = job.params || {};
  if (job.kind === "analyze" || job.kind === "sweep") {
    return params.match === "none" ? "no matching" : `${params.match} matching`;
  }
  if (job.kind === "match") return `${params.method} matching`;
  if (job.kind === "interpolate") return `α = ${params.alpha}`;
  if (job.kind === "train") return `${params.epochs} epochs`;
  if (job.kind === "merge") return `${params.method.replace("_", " ")}, repair ${params.repair}`;
  return "";
}

// A finished analysis's loss barrier: naive → matched when it matched, naive alone otherwise.
function lossBarriers(job) {
  const pairs = job.kind === "analyze" && job.result && job.result.pairs;
  if (!pairs) return "—";
  const naive = formatNumber(pairs.naive.lmc.loss_barrier);
  return pairs.matched ? `${naive} → ${formatNumber(pairs.matched.lmc.loss_barrier)}` : naive;
}

function duration(job) {
  if (!job.started_at) return "—";
  const end = job.finished_at ? new Date(job.finished_at) : new Date();
  return formatDuration((end - new Date(job.started_at)) / 1000);
}

// --- One job. --------------------------------------------------------------------------------------

async function showJob(jobId, generation) {
  let job;
  try {
    job = await api(`/v1/jobs/${encodeURIComponent(jobId)}`);
  } catch (error) {
    if (generation === viewGeneration) showError(error);
    return;
  }
  if (generation !== viewGeneration) return;
  const sections = [
    h("p", {}, h("a", { href: "/", "data-internal": true }, "← all jobs")),
    h("h1", {}, `${job.kind} job `, h("span", { className: "mono" }, job.id)),
    jobSummary(job),
  ];
  if (job.kind === "analyze" && job.status === "succeeded" && job.result) {
    sections.push(
      h("p", { id: "result-csv" }, "The result's numbers, one per line: ",
        downloadLink(`/v1/jobs/${encodeURIComponent(job.id)}/result.csv`, `${job.id}.csv`,
          "download CSV")),
      plotsSection(job),
      ...analysisTables(job.result),
    );
  } else if (job.kind === "sweep" && job.status === "succeeded" && job.result) {
    sections.push(
      h("p", { id: "result-csv" }, "The matrices' entries, one per line: ",
        downloadLink(`/v1/jobs/${encodeURIComponent(job.id)}/result.csv`, `${job.id}.csv`,
          "download CSV")),
      plotsSection(job, SWEEP_PLOTS),
      ...sweepTables(job.result),
    );
  } else if (job.result) {
    sections.push(
      h("h2", {}, "Result"),
      h("pre", { id: "raw-result", className: "json" }, JSON.stringify(job.result, null, 2)),
    );
  }
  setView(...sections);
  if (ACTIVE_STATUSES.has(job.status)) {
    scheduleRefresh(generation, ACTIVE_REFRESH_MS, (g) => showJob(jobId, g));
  }
}

function jobSummary(job) {
  const rows = [
    ["status", statusBadge(job.status)],
    ["progress", progressBar(job.progress, job.status)],
    ["model A", job.model_a && modelName(job.model_a)],
    ["model B", job.model_b && modelName(job.model_b)],
    ["models", job.models && job.models.flatMap((id, i) => [i ? ", " : "", modelName(id)])],
    ["method", method(job)],
    ["duration", duration(job)],
    ["dataset", job.dataset],
    ["created", formatTime(job.created_at)],
    ["started", formatTime(job.started_at)],
    ["finished", formatTime(job.finished_at)],
  ].filter(([, value]) => value !== null && value !== undefined);
  const table = h(
    "table",
    { id: "job-summary", className: "summary" },
    h("tbody", {}, rows.map(([name, value]) => h("tr", {}, h("th", {}, name), h("td", {}, value)))),
  );
  const parts = [table];
  if (job.error) parts.push(h("p", { className: "error", role: "alert" }, job.error));
  if (ACTIVE_STATUSES.has(job.status) && !job.cancel_requested) {
    parts.push(
      h("button", { type: "button", onclick: () => cancelJob(job.id) }, "Cancel this job"),
    );
  }
  if (job.artifacts && job.artifacts.length) {
    parts.push(
      h("h2", {}, "Artifacts"),
      h(
        "ul",
        { id: "artifacts" },
        job.artifacts.map((artifact) => h("li", {}, `${artifact.name}: `, artifactLink(job, artifact))),
      ),
    );
  }
  parts.push(
    h("details", {}, h("summary", {}, "parameters"),
      h("pre", { className: "json" }, JSON.stringify(job.params, null, 2))),
  );
  return h("section", { className: "job" }, parts);
}

function artifactLink(job, artifact) {
  if (artifact.checkpoint_id) {
    const path = `/v1/checkpoints/${encodeURIComponent(artifact.checkpoint_id)}/file`;
    return [
      h("span", { className: "mono" }, artifact.checkpoint_id), " ",
      downloadLink(path, `${job.id}-${artifact.name}.safetensors`, "download"),
    ];
  }
  const suffix = (artifact.url.match(/\.[a-z0-9]+$/i) || [""])[0];
  const filename = `${job.id}-${artifact.name}${suffix}`;
  return downloadLink(artifact.url, filename, "download");
}

async function cancelJob(jobId) {
  try {
    await api(`/v1/jobs/${encodeURIComponent(jobId)}/cancel`, { method: "POST" });
  } catch (error) {
    showError(error);
    return;
  }
  route();
}

// --- Plots: fetched with the key as blobs, shown through object URLs. --------------------------

function plotsSection(job, plots = PLOTS) {
  const figures = plots.map(([name, caption]) => {
    const image = h("img", { className: "plot", alt: caption, dataset: { plot: name } });
    const status = h("figcaption", {}, caption);
    loadPlot(job.id, name, image, status);
    return h("figure", {}, image, status);
  });
  return h("section", { id: "plots" }, h("h2", {}, "Plots"), figures);
}

async function loadPlot(jobId, name, image, caption) {
  const generation = viewGeneration;
  try {
    const blob = await api(`/v1/jobs/${encodeURIComponent(jobId)}/plots/${name}.png`, {
      as: "blob",
    });
    if (generation !== viewGeneration) return;
    const url = URL.createObjectURL(blob);
    objectUrls.push(url);
    image.src = url;
    caption.append(" ", h("a", { href: url, download: `${jobId}-${name}.png`, className: "download" },
      "PNG"));
  } catch (error) {
    caption.append(h("span", { className: "error" }, ` (could not load: ${error.message})`));
  }
}

// --- The matrices of a sweep result. ---------------------------------------------------------------

// One N × N table per pair kind and metric; row i, column j: model i as A, model j as B.
function sweepTables(result) {
  const numbers = result.models.map((_, index) => String(index));
  const legend = h("ol", { id: "sweep-models", start: "0" },
    result.models.map((id) => h("li", {}, modelName(id))));
  const tables = [];
  for (const [kind, matrices] of Object.entries(result.matrices)) {
    for (const [metric, title, show] of SWEEP_METRICS) {
      tables.push(
        h("h3", {}, `${title}, ${kind}`),
        table(
          `sweep-${kind}-${metric}`,
          h("tr", {}, h("th", {}, ""), numbers.map((n) => h("th", {}, n))),
          matrices[metric].map((row, i) =>
            h("tr", {}, h("th", {}, numbers[i]), row.map((value) => h("td", {}, show(value))))),
        ),
      );
    }
  }
  return [h("h2", {}, "Matrices"), legend, ...tables];
}

// --- Metric tables of an analyze result. -------------------------------------------------------

function pairNames(result) {
  const method = result.settings && result.settings.match;
  const names = [["naive", "naive"]];
  if (result.pairs.matched) names.push(["matched", method ? `${method} matching` : "matched"]);
  return names;
}

function table(id, headRows, bodyRows) {
  return h(
    "table",
    { id, className: "data numbers" },
    h("thead", {}, headRows),
    h("tbody", {}, bodyRows),
  );
}

function barrierTable(result) {
  const pairs = pairNames(result);
  const row = (label, cell) =>
    h("tr", {}, h("th", {}, label), pairs.map(([key]) => h("td", {}, cell(result.pairs[key]))));
  return table(
    "barriers-table",
    [h("tr", {}, h("th", {}, ""), pairs.map(([, label]) => h("th", {}, label)))],
    [
      row("loss barrier", (p) => formatNumber(p.lmc.loss_barrier)),
      row("error barrier", (p) => formatPercent(p.lmc.error_barrier)),
      row("largest error on the path", (p) => formatPercent(p.lemma.max_error_on_path)),
      row("Lemma: error on the path ≤ 2ε", (p) =>
        `${p.lemma.holds ? "holds" : "does not hold"} (ε = ${formatPercent(p.lemma.epsilon)})`),
    ],
  );
}

// A's and B's loss and error, labelled: where BatchNorm statistics were re-estimated on the job's
// data (what the barriers are measured against), also as uploaded. Results of services before
// `as_uploaded` was added carry neither label.
function endpointsTable(result) {
  const sides = [["a", "model A"], ["b", "model B"]];
  const endpoints = sides.map(([key]) => result.endpoints[key]);
  const reestimated = endpoints.some((endpoint) => endpoint.batch_norm_reestimated);
  const labelled = endpoints.every((endpoint) => endpoint.as_uploaded);
  const measured = reestimated ? ", BatchNorm re-estimated" : labelled ? " as uploaded" : "";
  const headers = [`loss${measured}`, `error${measured}`];
  if (reestimated) headers.push("loss as uploaded", "error as uploaded");
  return table(
    "endpoints-table",
    [h("tr", {}, h("th", {}, ""), headers.map((header) => h("th", {}, header)))],
    sides.map(([, label], index) => {
      const endpoint = endpoints[index];
      const cells = [formatNumber(endpoint.loss), formatPercent(endpoint.error)];
      if (reestimated) {
        cells.push(formatNumber(endpoint.as_uploaded.loss), formatPercent(endpoint.as_uploaded.error));
      }
      return h("tr", {}, h("th", {}, label), cells.map((cell) => h("td", {}, cell)));
    }),
  );
}

function llfcTable(result) {
  const pairs = pairNames(result);
  const alphas = Object.keys(result.pairs.naive.llfc.cos_alpha);
  const columns = 1 + alphas.length;
  const head = [
    h("tr", {}, h("th", { rowspan: 2 }, "layer"),
      pairs.map(([, label]) => h("th", { colspan: columns, className: "group" }, label))),
    h("tr", {}, pairs.map(() => [
      h("th", { title: "E[1 − cos(f_A, f_B)]" }, "baseline A–B"),
      alphas.map((alpha) => h("th", { title: "E[1 − cos_α]" }, `α = ${alpha}`)),
    ])),
  ];
  const body = result.pairs.naive.llfc.layers.map((layer, index) =>
    h("tr", {}, h("th", { className: "mono" }, layer), pairs.map(([key]) => {
      const llfc = result.pairs[key].llfc;
      return [
        h("td", { className: "baseline" }, formatNumber(llfc.cos_ab[index])),
        alphas.map((alpha) => h("td", {}, formatNumber(llfc.cos_alpha[alpha][index]))),
      ];
    })),
  );
  return table("llfc-table", head, body);
}

function conditionOneTable(result) {
  const pairs = pairNames(result);
  const alphas = Object.keys(result.pairs.naive.weak_additivity);
  const head = [
    h("tr", {}, h("th", { rowspan: 2 }, "activation layer"),
      pairs.map(([, label]) => h("th", { colspan: alphas.length, className: "group" }, label))),
    h("tr", {}, pairs.map(() => alphas.map((alpha) => h("th", {}, `α = ${alpha}`)))),
  ];
  const body = result.pairs.naive.weak_additivity_layers.map((layer, index) =>
    h("tr", {}, h("th", { className: "mono" }, layer), pairs.map(([key]) =>
      alphas.map((alpha) =>
        h("td", {}, formatNumber(result.pairs[key].weak_additivity[alpha][index]))))),
  );
  return table("condition-one-table", head, body);
}

function conditionTwoTable(result) {
  const pairs = pairNames(result);
  const names = ["Condition II", "d(W_A, W_B)", "d(H_A, H_B)"];
  const head = [
    h("tr", {}, h("th", { rowspan: 2 }, "weighted layer"),
      pairs.map(([, label]) => h("th", { colspan: names.length, className: "group" }, label))),
    h("tr", {}, pairs.map(() => names.map((name) => h("th", {}, name)))),
  ];
  const body = result.pairs.naive.commutativity_layers.map((layer, index) =>
    h("tr", {}, h("th", { className: "mono" }, layer), pairs.map(([key]) => {
      const pair = result.pairs[key];
      return [
        h("td", {}, formatNumber(pair.commutativity[index])),
        h("td", {}, formatNumber(pair.commutativity_factors.weights[index])),
        h("td", {}, formatNumber(pair.commutativity_factors.features[index])),
      ];
    })),
  );
  return table("condition-two-table", head, body);
}

function matchingTable(matching) {
  const rows = Object.entries(matching).filter(([, value]) => typeof value !== "object");
  return table(
    "matching-table",
    [],
    rows.map(([name, value]) =>
      h("tr", {}, h("th", {}, name.replaceAll("_", " ")),
        h("td", {}, typeof value === "number" ? formatNumber(value) : String(value)))),
  );
}

function analysisTables(result) {
  const settings = result.settings || {};
  const sections = [
    h("h2", {}, "Barriers"),
    h("p", { className: "muted" },
      "max over α of metric(θ_α) − (α·metric(A) + (1 − α)·metric(B)), " +
      `θ_α = α·θ_A + (1 − α)·θ_B, on ${settings.num_examples ?? "?"} examples.`),
    h("div", { className: "tables" }, barrierTable(result), endpointsTable(result)),
  ];
  if (result.matching) {
    sections.push(h("h2", {}, `Matching (${result.matching.method})`), matchingTable(result.matching));
  }
  sections.push(
    h("h2", {}, "LLFC per layer"),
    h("p", { className: "muted" },
      "Mean cosine distance over examples. LLFC holds where E[1 − cos_α] (between the features " +
      "of θ_α and the α-mix of A's and B's features) is far below the A–B baseline."),
    llfcTable(result),
    h("h2", {}, "Condition I: weak additivity of each activation"),
    h("p", { className: "muted" },
      "Relative squared distance between σ(αh_A + (1 − α)h_B) and ασ(h_A) + (1 − α)σ(h_B), " +
      "h the pre-activations; 0 means the condition holds exactly."),
    conditionOneTable(result),
    h("h2", {}, "Condition II: commutativity"),
    h("p", { className: "muted" },
      "Relative squared distance between W_A H_A + W_B H_B and W_A H_B + W_B H_A, beside its " +
      "factors: the distance of the weights W and of the layer inputs H."),
    conditionTwoTable(result),
  );
  return sections;
}

// --- Start. --------------------------------------------------------------------------------------

document.addEventListener("DOMContentLoaded", () => {
  document.getElementById("key-form").addEventListener("submit", saveKey);
  document.addEventListener("click", navigate);
  window.addEventListener("popstate", route);
  loadConfig();
  route();
});

// The web view of LLFC Align: plain JavaScript over the JSON API (API.md), no build step.
//
// "/" lists the owner's jobs and refreshes while any is queued or running; "/jobs/{id}" shows
// one job, and for a succeeded analyze job its plots and metric tables. Every request carries
// the API key from sessionStorage when there is one, images included (fetched as blobs), because
// a plain <img src> cannot send an Authorization header. The key lives only as long as the tab:
// sessionStorage is not shared with other tabs and is gone when the tab closes.
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

// --- The API, with the key when there is one. --------------------------------------------------

function apiKey() {
  return window.sessionStorage.getItem(KEY_STORAGE) || "";
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
      h("td", {}, statusBadge(job.status)),
      h("td", {}, progressBar(job.progress, job.status)),
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
            h("tr", {}, ["id", "kind", "status", "progress", "created"].map((t) => h("th", {}, t))),
          ),
          h("tbody", {}, rows),
        )
      : h("p", { id: "no-jobs" }, "No jobs yet. Try: llfc demo"),
    page.next_cursor ? h("p", { className: "muted" }, "Showing the newest 100 jobs.") : null,
  );
  scheduleRefresh(generation, active ? ACTIVE_REFRESH_MS : IDLE_REFRESH_MS, showJobs);
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
    sections.push(plotsSection(job), ...analysisTables(job.result));
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
    ["model A", job.model_a],
    ["model B", job.model_b],
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
        job.artifacts.map((artifact) =>
          h("li", {}, `${artifact.name}: `,
            h("span", { className: "mono" }, artifact.checkpoint_id || artifact.url || "")),
        ),
      ),
    );
  }
  parts.push(
    h("details", {}, h("summary", {}, "parameters"),
      h("pre", { className: "json" }, JSON.stringify(job.params, null, 2))),
  );
  return h("section", { className: "job" }, parts);
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

function plotsSection(job) {
  const figures = PLOTS.map(([name, caption]) => {
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
  } catch (error) {
    caption.append(h("span", { className: "error" }, ` (could not load: ${error.message})`));
  }
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
    h("tr", {}, h("th", { rowspan: 2 }, "ReLU layer"),
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
    h("h2", {}, "Condition I: weak additivity of ReLU"),
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
  renderKeyStatus();
  route();
});

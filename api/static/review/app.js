// The review page (issue 12): worklist, study view, review, critical alerts, success measures.
// Plain ES module, no dependencies. Every API call carries the reader's bearer token; the API
// applies the reader's alert policy, so this page shows what it is given and nothing more.
// Text reaches the DOM only through textContent (never innerHTML): results carry free text.

const API = "/api/v1/clinical";
const TOKEN_KEY = "pacsai-review-token";
const LAST_EVENT_KEY = "pacsai-review-last-event";
const MAX_BANNERS = 5;

const state = {
  token: "",
  me: null,
  items: [],
  total: 0,
  current: -1, // index in items of the open study
  result: null,
  selected: 0, // index in result.findings
  decisions: new Map(), // finding key -> {assessment, final_present, comment}
  images: new Map(), // "key|overlay" -> blob URL
  heatmapViewed: false,
  events: null, // AbortController of the event stream
  imageSeq: 0,
};

const $ = (id) => document.getElementById(id);

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs)) {
    if (value === undefined || value === null || value === false) continue;
    if (name === "class") node.className = value;
    else if (name === "text") node.textContent = value;
    else if (name.startsWith("on")) node.addEventListener(name.slice(2), value);
    else node.setAttribute(name, value === true ? "" : String(value));
  }
  for (const child of children) {
    if (child === null || child === undefined || child === false) continue;
    node.append(typeof child === "string" ? document.createTextNode(child) : child);
  }
  return node;
}

class ApiError extends Error {
  constructor(status, detail) {
    super(detail || `HTTP ${status}`);
    this.status = status;
  }
}

// ------------------------------------------------------------------ API calls

async function call(path, options = {}) {
  const headers = new Headers(options.headers || {});
  headers.set("Authorization", `Bearer ${state.token}`);
  const response = await fetch(path, { ...options, headers, cache: "no-store", credentials: "omit" });
  if (response.ok) return response;
  let detail = "";
  try {
    const problem = await response.json();
    detail = problem.detail || problem.title || "";
  } catch {
    detail = response.statusText;
  }
  throw new ApiError(response.status, detail);
}

async function json(path, options) {
  return (await call(path, options)).json();
}

// ------------------------------------------------------------------ formatting

function when(value) {
  if (value === null || value === undefined || value === "") return "";
  const date = typeof value === "number" ? new Date(value * 1000) : new Date(value);
  if (Number.isNaN(date.getTime())) return String(value);
  const pad = (n) => String(n).padStart(2, "0");
  return `${date.getFullYear()}-${pad(date.getMonth() + 1)}-${pad(date.getDate())} ${pad(date.getHours())}:${pad(date.getMinutes())}`;
}

function pct(value) {
  return typeof value === "number" ? `${Math.round(value * 100)}%` : "–";
}

function label(key) {
  return String(key || "").replaceAll("_", " ");
}

function shortUid(uid) {
  const text = String(uid || "");
  return text.length > 24 ? `…${text.slice(-20)}` : text;
}

function intervalText(change) {
  if (!change) return "";
  if (typeof change === "string") return label(change);
  const kind = change.change || change.status || "";
  if (change.description) return change.description;
  if (typeof change.prior_probability === "number") {
    return `${label(kind)} (was ${pct(change.prior_probability)})`;
  }
  return label(kind);
}

// ------------------------------------------------------------------ sign-in

function showSignin(message = "") {
  stopEvents();
  state.token = "";
  state.me = null;
  sessionStorage.removeItem(TOKEN_KEY);
  sessionStorage.removeItem(LAST_EVENT_KEY); // the next reader starts from what is new
  sessionStorage.removeItem("pacsai-reader-name");
  $("reader-name").value = "";
  clearStudy();
  state.items = []; // nothing of one reader's view stays for the next
  state.total = 0;
  $("worklist").replaceChildren();
  $("worklist-count").textContent = "";
  $("review-status").textContent = "";
  delete $("review-status").dataset.submitted;
  hideSuccess();
  $("success-plots").replaceChildren();
  $("app-view").hidden = true;
  $("signin-view").hidden = false;
  $("sign-out").hidden = true;
  $("show-success").hidden = true;
  $("who").textContent = "";
  $("alerts").replaceChildren();
  $("signin-error").textContent = message;
  $("token").value = "";
  $("token").focus();
}

async function signIn(token) {
  state.token = token;
  try {
    state.me = await json(`${API}/me`);
  } catch (error) {
    const why =
      error.status === 401
        ? "The token was refused (unknown, expired or revoked)."
        : error.status === 403
          ? `Signed in, but not allowed here: ${error.message}`
          : `Sign-in failed: ${error.message}`;
    showSignin(why);
    return;
  }
  sessionStorage.setItem(TOKEN_KEY, token);
  const roles = (state.me.roles || []).map(label).join(", ") || "no role";
  $("who").textContent = `${state.me.user} · ${roles}${state.me.may_review ? "" : " · read only"}`;
  $("signin-view").hidden = true;
  $("app-view").hidden = false;
  $("sign-out").hidden = false;
  $("signin-error").textContent = "";
  await loadWorklist();
  startEvents();
  probeSuccess();
  const first = document.querySelector("#worklist button");
  (first || $("refresh")).focus();
}

// ------------------------------------------------------------------ worklist

async function loadWorklist(keepOpen = true) {
  let answer;
  try {
    answer = await json(`${API}/worklist?limit=50&offset=0`);
  } catch (error) {
    if (error.status === 401) return showSignin("Your sign-in expired; sign in again.");
    $("worklist-count").textContent = `The worklist could not be loaded: ${error.message}`;
    return;
  }
  const openUid = keepOpen && state.result ? state.result.sr_uid : null;
  state.items = answer.items || [];
  state.total = answer.total ?? state.items.length;
  state.current = openUid ? state.items.findIndex((item) => item.sr_uid === openUid) : -1;
  renderWorklist();
}

function renderWorklist() {
  const list = $("worklist");
  list.replaceChildren();
  $("worklist-count").textContent = state.items.length
    ? `${state.items.length} of ${state.total} studies, most urgent first`
    : "No studies need you now.";
  state.items.forEach((item, index) => {
    const alerts = (item.alerts || []).map((a) => `${label(a.finding)} ${pct(a.probability)}`).join(", ");
    const badges = el(
      "span",
      { class: "badges" },
      item.critical ? el("span", { class: "badge critical", text: "Critical" }) : null,
      item.order_priority ? el("span", { class: `badge ${item.order_priority}`, text: item.order_priority.toUpperCase() }) : null,
      item.reviewed ? el("span", { class: "badge done", text: "Reviewed" }) : null,
    );
    const button = el(
      "button",
      {
        type: "button",
        class: "item",
        "data-sr": item.sr_uid,
        "aria-current": index === state.current ? "true" : null,
        onclick: () => openStudy(index),
      },
      el("span", { class: "item-line" }, el("strong", { text: label(item.family) }), badges),
      el("span", { class: "item-line muted", text: `${when(item.created_at)} · top ${pct(item.top_probability)}` }),
      el("span", { class: "item-alerts", text: alerts || "no alerts" }),
    );
    button.setAttribute(
      "aria-label",
      `${item.critical ? "Critical. " : ""}${label(item.family)}, ${alerts || "no alerts"}${item.reviewed ? ", reviewed" : ""}`,
    );
    list.append(el("li", {}, button));
  });
}

function moveInWorklist(step) {
  const buttons = [...document.querySelectorAll("#worklist button")];
  if (!buttons.length) return;
  const at = buttons.indexOf(document.activeElement);
  const next = at < 0 ? Math.max(state.current, 0) : Math.min(Math.max(at + step, 0), buttons.length - 1);
  buttons[next].focus();
}

// ------------------------------------------------------------------ study view

function clearStudy() {
  for (const url of state.images.values()) URL.revokeObjectURL(url);
  state.images.clear();
  state.result = null;
  state.current = -1;
  state.decisions.clear();
  state.heatmapViewed = false;
  $("study-body").hidden = true;
  $("study-empty").hidden = false;
  $("image").removeAttribute("src");
}

async function openStudy(index) {
  const item = state.items[index];
  if (!item) return;
  let result;
  try {
    result = await json(`${API}/results/${encodeURIComponent(item.sr_uid)}`);
  } catch (error) {
    if (error.status === 401) return showSignin("Your sign-in expired; sign in again.");
    $("review-status").textContent = "";
    $("study-empty").textContent = `The result could not be opened: ${error.message}`;
    return;
  }
  clearStudy();
  hideSuccess();
  state.current = index;
  state.result = result;
  state.selected = 0;
  renderWorklist();
  renderStudy();
  $("study").focus();
  showImage();
}

function renderStudy() {
  const result = state.result;
  $("study-empty").hidden = true;
  $("study-body").hidden = false;
  $("study-title").textContent = `${label(result.family)} · study ${shortUid(result.study_uid)}`;
  const version = result.version ? ` · version ${result.version}` : "";
  $("study-meta").textContent = `${result.model_version || ""}${version} · result of ${when(result.created_at)}`;
  $("reader-name").value = $("reader-name").value || sessionStorage.getItem("pacsai-reader-name") || "";
  $("final-diagnosis").value = "";
  $("review-status").textContent = state.me.may_review ? "" : "Your credential may read but not submit reviews.";
  $("submit").disabled = !state.me.may_review;
  renderFindings();
  renderPrior();
  renderReviews();
}

function renderFindings() {
  const body = $("findings");
  body.replaceChildren();
  const findings = state.result.findings || [];
  if (!findings.length) {
    body.append(el("tr", {}, el("td", { colspan: 4, class: "muted", text: "No finding for your role." })));
    return;
  }
  findings.forEach((finding, index) => body.append(findingRow(finding, index)));
  markSelected();
}

function findingRow(finding, index) {
  const key = finding.finding;
  const decision = state.decisions.get(key);
  const may = state.me.may_review && !finding.quality_flag; // flags are for the technologist, not reviewed
  const choose = (assessment) => () => decide(index, assessment);
  const buttons = ["agree", "disagree", "override"].map((assessment) =>
    el("button", {
      type: "button",
      class: `assess ${assessment}`,
      "aria-pressed": decision && decision.assessment === assessment ? "true" : "false",
      "aria-label": `${assessment} with ${label(key)}`,
      "data-assessment": assessment,
      disabled: !may,
      onclick: choose(assessment),
      text: assessment[0].toUpperCase() + assessment.slice(1),
    }),
  );
  const finalSelect = el(
    "select",
    { "aria-label": `Final call on ${label(key)}`, class: "final-call", disabled: !may, hidden: !(decision && decision.assessment === "override") },
    el("option", { value: "true", text: "present" }),
    el("option", { value: "false", text: "absent" }),
  );
  finalSelect.value = String(decision ? decision.final_present : !finding.present);
  finalSelect.addEventListener("change", () => {
    const current = state.decisions.get(key);
    if (current) current.final_present = finalSelect.value === "true";
  });
  const comment = el("input", {
    type: "text",
    class: "comment",
    maxlength: 1000,
    placeholder: "comment",
    "aria-label": `Comment on ${label(key)}`,
    disabled: !may,
  });
  comment.value = decision ? decision.comment : "";
  comment.addEventListener("input", () => {
    const current = state.decisions.get(key);
    if (current) current.comment = comment.value;
  });
  const tags = el(
    "span",
    { class: "badges" },
    finding.critical ? el("span", { class: "badge critical", text: "Critical" }) : null,
    finding.quality_flag ? el("span", { class: "badge quality", text: "Image quality" }) : null,
    finding.has_heatmap ? el("span", { class: "badge heat", text: "Heatmap" }) : null,
  );
  const meter = el("meter", { min: 0, max: 1, value: finding.probability ?? 0, "aria-label": `probability ${pct(finding.probability)}` });
  return el(
    "tr",
    { "data-finding": key, onclick: (event) => (event.target.closest("button, input, select") ? null : select(index)) },
    el(
      "th",
      { scope: "row" },
      el("button", { type: "button", class: "finding-name", onclick: () => select(index), text: label(key) }),
      finding.meaning ? el("span", { class: "muted meaning", text: finding.meaning }) : null,
      tags,
    ),
    el(
      "td",
      {},
      el("span", { class: "prob", text: pct(finding.probability) }),
      meter,
      el("span", { class: "muted", text: ` ≥ ${pct(finding.threshold)} ${finding.present ? "present" : "absent"}` }),
    ),
    el("td", { class: "interval", text: intervalText(finding.interval_change) || "–" }),
    finding.quality_flag
      ? el("td", { class: "decision muted", text: "Image-quality flag (not reviewed)" })
      : el(
          "td",
          { class: "decision" },
          el("span", { class: "assess-group", role: "group", "aria-label": `Review of ${label(key)}` }, ...buttons),
          finalSelect,
          comment,
        ),
  );
}

function markSelected() {
  const rows = [...document.querySelectorAll("#findings tr[data-finding]")];
  rows.forEach((row, index) => row.classList.toggle("selected", index === state.selected));
  const finding = (state.result.findings || [])[state.selected];
  $("image-finding").textContent = finding ? `Showing ${label(finding.finding)}` : "";
}

function select(index, focus = true) {
  const findings = state.result ? state.result.findings || [] : [];
  if (!findings.length) return;
  state.selected = Math.min(Math.max(index, 0), findings.length - 1);
  markSelected();
  if (focus) {
    const row = document.querySelectorAll("#findings tr[data-finding]")[state.selected];
    row?.querySelector(".finding-name")?.focus();
  }
  showImage();
}

function decide(index, assessment) {
  const finding = (state.result.findings || [])[index];
  if (!state.me.may_review || !finding) return;
  if (finding.quality_flag) {
    $("review-status").textContent = `${label(finding.finding)} is an image-quality flag: not reviewed here.`;
    return;
  }
  const previous = state.decisions.get(finding.finding);
  const finalPresent =
    assessment === "agree" ? Boolean(finding.present) : assessment === "disagree" ? !finding.present : previous ? previous.final_present : !finding.present;
  state.decisions.set(finding.finding, { assessment, final_present: finalPresent, comment: previous ? previous.comment : "" });
  const row = document.querySelectorAll("#findings tr[data-finding]")[index];
  row.querySelectorAll("button.assess").forEach((b) => b.setAttribute("aria-pressed", String(b.dataset.assessment === assessment)));
  const finalSelect = row.querySelector(".final-call");
  finalSelect.value = String(finalPresent);
  finalSelect.hidden = assessment !== "override";
  if (state.selected !== index) select(index, false);
  if (assessment === "override") finalSelect.focus();
  $("review-status").textContent = `${label(finding.finding)}: ${assessment}${assessment === "override" ? " (set the final call)" : ""}`;
}

function renderPrior() {
  const prior = state.result.prior;
  if (!prior) {
    $("prior").textContent = "No prior result to compare with.";
    return;
  }
  const parts = [];
  if (prior.summary) parts.push(prior.summary);
  const date = prior.study_date && /^\d{8}$/.test(prior.study_date) ? `${prior.study_date.slice(0, 4)}-${prior.study_date.slice(4, 6)}-${prior.study_date.slice(6)}` : prior.study_date;
  if (prior.created_at || date) parts.push(`prior of ${prior.created_at ? when(prior.created_at) : date}`);
  if (prior.study_uid) parts.push(`study ${shortUid(prior.study_uid)}`);
  if (prior.model_version) parts.push(String(prior.model_version));
  if (prior.source) parts.push(`from ${label(prior.source)}`);
  $("prior").textContent = `Compared with the prior: ${parts.join(" · ") || "yes"}`;
}

function renderReviews() {
  const reviews = state.result.reviews || [];
  $("earlier-count").textContent = `(${reviews.length})`;
  $("reviews").replaceChildren(
    ...reviews.map((r) =>
      el(
        "li",
        {},
        `${r.reader} · v${r.version} · ${label(r.finding)}: ${r.assessment} (final ${r.final_present ? "present" : "absent"}) · ${when(r.reviewed_at)}`,
        r.comment ? el("span", { class: "muted", text: ` — ${r.comment}` }) : null,
      ),
    ),
  );
  $("earlier").open = reviews.length > 0;
}

// ------------------------------------------------------------------ image with the heatmap

async function showImage() {
  const result = state.result;
  const finding = result && (result.findings || [])[state.selected];
  const image = $("image");
  if (!finding) {
    image.removeAttribute("src");
    $("image-note").textContent = "No image.";
    return;
  }
  const overlay = $("overlay").checked && finding.has_heatmap ? 1 : 0;
  const cacheKey = `${finding.finding}|${overlay}`;
  const seq = ++state.imageSeq;
  let url = state.images.get(cacheKey);
  if (!url) {
    $("image-note").textContent = "Loading the image…";
    try {
      const query = `finding=${encodeURIComponent(finding.finding)}&overlay=${overlay}`;
      const blob = await (await call(`${API}/results/${encodeURIComponent(result.sr_uid)}/image.png?${query}`)).blob();
      if (state.result !== result) return;
      url = URL.createObjectURL(blob);
      state.images.set(cacheKey, url);
    } catch (error) {
      if (seq === state.imageSeq) {
        image.removeAttribute("src");
        $("image-note").textContent = `No image: ${error.message}`;
      }
      return;
    }
  }
  if (seq !== state.imageSeq) return;
  image.src = url;
  image.alt = `Evidence image for ${label(finding.finding)}${overlay ? " with the AI heatmap overlaid" : ""}`;
  image.dataset.finding = finding.finding;
  image.dataset.overlay = String(overlay);
  $("image-note").textContent = overlay ? "" : finding.has_heatmap ? "Heatmap hidden." : "No heatmap for this finding.";
  if (overlay) state.heatmapViewed = true;
}

// ------------------------------------------------------------------ submit

async function submitReview(event) {
  event?.preventDefault();
  const result = state.result;
  if (!result || !state.me.may_review) return;
  const status = $("review-status");
  if (!state.decisions.size) {
    status.textContent = "Review at least one finding first (a agree, d disagree, o override).";
    return;
  }
  const readerName = $("reader-name").value.trim();
  if (!readerName) {
    status.textContent = "Enter your name as it is to be signed.";
    $("reader-name").focus();
    return;
  }
  sessionStorage.setItem("pacsai-reader-name", readerName);
  const body = {
    reader_name: readerName,
    findings: [...state.decisions.entries()].map(([finding, d]) => ({
      finding,
      assessment: d.assessment,
      final_present: d.final_present,
      comment: d.comment,
    })),
    final_diagnosis: $("final-diagnosis").value.trim(),
    heatmap_viewed: state.heatmapViewed,
  };
  $("submit").disabled = true;
  status.textContent = "Submitting…";
  try {
    const answer = await json(`${API}/results/${encodeURIComponent(result.sr_uid)}/reviews`, {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify(body),
    });
    status.textContent = `Review submitted (version ${answer.version}). The verified report goes to the PACS.`;
    status.dataset.submitted = String(answer.submission_id);
    const item = state.items[state.current];
    if (item) item.reviewed = true;
    renderWorklist();
    try {
      state.result.reviews = (await json(`${API}/results/${encodeURIComponent(result.sr_uid)}`)).reviews || [];
      renderReviews();
    } catch {
      // the review is in; the earlier-reviews list refreshes next time
    }
  } catch (error) {
    if (error.status === 401) return showSignin("Your sign-in expired; sign in again.");
    status.textContent = `Not submitted: ${error.message}`;
  } finally {
    $("submit").disabled = !state.me.may_review;
  }
}

// ------------------------------------------------------------------ critical alerts (SSE)

function stopEvents() {
  if (state.events) state.events.abort();
  state.events = null;
  setLive("off");
}

function setLive(mode) {
  const live = $("live");
  live.dataset.state = mode;
  live.textContent = { on: "Live alerts on", waiting: "Live alerts: connecting…", off: "" }[mode] || "";
}

function startEvents() {
  stopEvents();
  const controller = new AbortController();
  state.events = controller;
  listen(controller.signal);
}

async function listen(signal) {
  let wait = 1000;
  while (!signal.aborted) {
    setLive("waiting");
    try {
      const headers = { Authorization: `Bearer ${state.token}`, Accept: "text/event-stream" };
      const last = sessionStorage.getItem(LAST_EVENT_KEY);
      if (last) headers["Last-Event-ID"] = last;
      const response = await fetch(`${API}/events`, { headers, signal, cache: "no-store", credentials: "omit" });
      if (response.status === 404 || response.status === 403) return setLive("off"); // not offered to this reader
      if (response.status === 401) return showSignin("Your sign-in expired; sign in again.");
      if (!response.ok || !response.body) throw new Error(`HTTP ${response.status}`);
      wait = 1000;
      const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
      let buffer = "";
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        setLive("on"); // the server subscribed before its first line: nothing new is missed from here
        buffer += value.replaceAll("\r\n", "\n");
        let end;
        while ((end = buffer.indexOf("\n\n")) >= 0) {
          const block = buffer.slice(0, end);
          buffer = buffer.slice(end + 2);
          const retry = dispatch(block);
          if (retry) wait = retry;
        }
      }
    } catch {
      if (signal.aborted) return;
    }
    await new Promise((resolve) => setTimeout(resolve, wait));
    wait = Math.min(wait * 2, 30000);
  }
}

function dispatch(block) {
  let type = "message";
  let id = null;
  let retry = 0;
  const data = [];
  for (const line of block.split("\n")) {
    if (!line || line.startsWith(":")) continue;
    const at = line.indexOf(":");
    const field = at < 0 ? line : line.slice(0, at);
    const value = at < 0 ? "" : line.slice(at + 1).replace(/^ /, "");
    if (field === "event") type = value;
    else if (field === "data") data.push(value);
    else if (field === "id") id = value;
    else if (field === "retry" && /^\d+$/.test(value)) retry = Number(value);
  }
  if (id !== null) sessionStorage.setItem(LAST_EVENT_KEY, id);
  if (type === "critical" && data.length) {
    try {
      banner(JSON.parse(data.join("\n")));
    } catch {
      // a malformed event is dropped; the worklist still shows the study
    }
  }
  return retry;
}

function banner(alert) {
  const box = $("alerts");
  const text = `Critical: ${label(alert.finding)} ${pct(alert.probability)} · ${label(alert.family)} · study ${shortUid(alert.study_uid)}`;
  const node = el(
    "div",
    { class: "banner", "data-sr": alert.sr_uid },
    el("span", { text }),
    el("button", {
      type: "button",
      text: "Open",
      "aria-label": `Open the study with ${label(alert.finding)}`,
      onclick: async () => {
        node.remove();
        await loadWorklist();
        const index = state.items.findIndex((item) => item.sr_uid === alert.sr_uid);
        if (index >= 0) openStudy(index);
      },
    }),
    el("button", { type: "button", text: "Dismiss", "aria-label": "Dismiss this alert", onclick: () => node.remove() }),
  );
  box.prepend(node);
  while (box.children.length > MAX_BANNERS) box.lastElementChild.remove();
  loadWorklist();
}

// ------------------------------------------------------------------ success measures

const MEASURES = [
  ["utilisation", "AI utilisation", "rate"],
  ["agreement_rate", "Agreement", "rate"],
  ["false_positive_rate", "False-positive rate", "rate"],
  ["critical_sensitivity", "Critical sensitivity", "rate"],
  ["uptime", "Uptime", "rate"],
  ["turnaround_archive_to_sr_p50_s", "Archive → SR, median", "seconds"],
  ["turnaround_sr_to_review_p50_s", "SR → review, median", "seconds"],
];

async function probeSuccess() {
  try {
    await call(`${API}/success?months=12`);
    $("show-success").hidden = false;
  } catch {
    $("show-success").hidden = true; // not offered (route absent or not for this reader)
  }
}

function hideSuccess() {
  $("success").hidden = true;
  $("study").hidden = false;
  $("show-success").setAttribute("aria-expanded", "false");
}

async function showSuccess() {
  $("study").hidden = true;
  $("success").hidden = false;
  $("show-success").setAttribute("aria-expanded", "true");
  $("success-note").textContent = "Loading…";
  let answer;
  try {
    answer = await json(`${API}/success?months=12`);
  } catch (error) {
    $("success-note").textContent = `Not available: ${error.message}`;
    return;
  }
  const rows = answer.rows || [];
  $("success-note").textContent = rows.length
    ? "Per model version and month, computed from the ledger and the reviews."
    : "No results yet.";
  $("success-alerts").replaceChildren(
    ...(answer.alerts || []).map((a) =>
      el("p", {
        class: "warning",
        text: `${a.model_version}, ${a.month}: agreement ${pct(a.agreement_rate)} below the floor ${pct(a.floor)} (${a.reviews} reviews)`,
      }),
    ),
  );
  const versions = [...new Set(rows.map((r) => r.model_version))].sort();
  const plots = $("success-plots");
  plots.replaceChildren();
  for (const version of versions) {
    const series = rows.filter((r) => r.model_version === version).sort((a, b) => (a.month < b.month ? -1 : 1));
    const figure = el("section", { class: "version" }, el("h3", { text: version }));
    const grid = el("div", { class: "plot-grid" });
    for (const [key, title, kind] of MEASURES) grid.append(plot(series, key, title, kind));
    figure.append(grid);
    plots.append(figure);
  }
  $("close-success").focus();
}

function plot(series, key, title, kind) {
  const NS = "http://www.w3.org/2000/svg";
  const width = 180;
  const height = 56;
  const points = series.map((row, i) => ({ month: row.month, value: row[key] })).filter((p) => typeof p.value === "number");
  const top = kind === "rate" ? 1 : Math.max(1, ...points.map((p) => p.value));
  const x = (i) => (series.length < 2 ? width / 2 : 6 + (i * (width - 12)) / (series.length - 1));
  const y = (v) => height - 6 - (v / top) * (height - 12);
  const svg = document.createElementNS(NS, "svg");
  svg.setAttribute("viewBox", `0 0 ${width} ${height}`);
  svg.setAttribute("role", "img");
  const spoken = points.map((p) => `${p.month} ${kind === "rate" ? pct(p.value) : `${Math.round(p.value)} s`}`).join(", ");
  svg.setAttribute("aria-label", `${title}: ${spoken || "no data"}`);
  const axis = document.createElementNS(NS, "line");
  for (const [name, value] of [["x1", 0], ["x2", width], ["y1", height - 6], ["y2", height - 6], ["class", "axis"]]) axis.setAttribute(name, value);
  svg.append(axis);
  const coords = series
    .map((row, i) => (typeof row[key] === "number" ? `${x(i).toFixed(1)},${y(row[key]).toFixed(1)}` : null))
    .filter(Boolean);
  if (coords.length > 1) {
    const line = document.createElementNS(NS, "polyline");
    line.setAttribute("points", coords.join(" "));
    line.setAttribute("class", "series");
    svg.append(line);
  }
  for (const c of coords) {
    const [cx, cy] = c.split(",");
    const dot = document.createElementNS(NS, "circle");
    for (const [name, value] of [["cx", cx], ["cy", cy], ["r", 2.5], ["class", "point"]]) dot.setAttribute(name, value);
    svg.append(dot);
  }
  const last = points.length ? points[points.length - 1].value : null;
  const shown = last === null ? "–" : kind === "rate" ? pct(last) : `${Math.round(last)} s`;
  const first = series.length ? series[0].month : "";
  const final = series.length ? series[series.length - 1].month : "";
  const months = first === final ? first : `${first} – ${final}`;
  return el(
    "figure",
    { class: "plot", "data-measure": key },
    el("figcaption", {}, el("span", { text: title }), el("strong", { text: shown })),
    svg,
    el("span", { class: "muted months", text: kind === "rate" ? `${months} · 0–100%` : `${months} · 0–${Math.round(top)} s` }),
  );
}

// ------------------------------------------------------------------ keyboard

function typing(target) {
  return target instanceof HTMLElement && (target.isContentEditable || ["INPUT", "TEXTAREA", "SELECT"].includes(target.tagName));
}

function onKey(event) {
  if (event.ctrlKey || event.metaKey || event.altKey || $("app-view").hidden) return;
  const target = event.target;
  if (event.key === "Escape") {
    if (typing(target)) {
      target.blur();
      select(state.selected);
    } else {
      const current = document.querySelector('#worklist button[aria-current="true"]') || document.querySelector("#worklist button");
      current?.focus();
    }
    return;
  }
  if (typing(target)) return; // Enter in a field of the review form submits it natively
  const inWorklist = Boolean(target instanceof Element && target.closest("#worklist"));
  const studyOpen = Boolean(state.result) && !$("study").hidden;
  switch (event.key) {
    case "j":
    case "k": {
      const step = event.key === "j" ? 1 : -1;
      if (inWorklist || !studyOpen) moveInWorklist(step);
      else select(state.selected + step);
      break;
    }
    case "a":
    case "d":
    case "o":
      if (!studyOpen || inWorklist) return;
      decide(state.selected, { a: "agree", d: "disagree", o: "override" }[event.key]);
      break;
    case "v":
      if (!studyOpen) return;
      $("overlay").checked = !$("overlay").checked;
      showImage();
      break;
    case "Enter":
      if (!studyOpen || inWorklist) return; // Enter on a worklist study opens it (a button)
      if (target instanceof HTMLButtonElement && !target.classList.contains("finding-name")) return;
      submitReview(event);
      break;
    default:
      return;
  }
  event.preventDefault();
}

// ------------------------------------------------------------------ start

function start() {
  $("signin").addEventListener("submit", (event) => {
    event.preventDefault();
    const token = $("token").value.trim();
    if (token) signIn(token);
  });
  $("sign-out").addEventListener("click", () => showSignin("Signed out."));
  $("refresh").addEventListener("click", () => loadWorklist());
  $("review").addEventListener("submit", submitReview);
  $("overlay").addEventListener("change", showImage);
  $("show-success").addEventListener("click", () => ($("success").hidden ? showSuccess() : hideSuccess()));
  $("close-success").addEventListener("click", () => {
    hideSuccess();
    $("show-success").focus();
  });
  document.addEventListener("keydown", onKey);
  const saved = sessionStorage.getItem(TOKEN_KEY);
  if (saved) signIn(saved);
  else $("token").focus();
}

start();

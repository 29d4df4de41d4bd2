"use strict";
/* #/start: pick a shipped config or write one, add `--set key=value` lines, Validate (the CLI's own
   checks; an error shows under the field holding the key it names), Start (queued: one training at
   a time). The queue is shown below and refreshed every 2 s. */

/** The --set lines that count: blank lines and # comments dropped, a leading "--set" allowed. */
UI.setLines = function (text) {
  return text.split("\n").map((line) => line.trim().replace(/^--set\s+/, "")).filter((l) => l && !l.startsWith("#"));
};

/** The 1-based line of a dotted key (`train.lr`) in YAML text, from its indentation; null when absent. */
UI.yamlKeyLine = function (text, dotted) {
  const stack = [];
  const lines = text.split("\n");
  for (let i = 0; i < lines.length; i++) {
    const match = lines[i].match(/^(\s*)([A-Za-z_][\w.-]*)\s*:/);
    if (!match || lines[i].trim().startsWith("#")) continue;
    const indent = match[1].length;
    while (stack.length && stack[stack.length - 1].indent >= indent) stack.pop();
    stack.push({ indent, key: match[2] });
    if (stack.map((s) => s.key).join(".") === dotted) return i + 1;
  }
  return null;
};

/** Select line `number` (1-based) of a textarea so the user sees what the error is about. */
function selectLine(textarea, number) {
  const lines = textarea.value.split("\n");
  const start = lines.slice(0, number - 1).reduce((n, l) => n + l.length + 1, 0);
  textarea.focus();
  textarea.setSelectionRange(start, start + (lines[number - 1] || "").length);
  const lineHeight = textarea.scrollHeight / Math.max(1, lines.length);
  textarea.scrollTop = Math.max(0, (number - 3) * lineHeight);
}

function clearErrors() {
  for (const id of ["yaml-error", "set-error"]) UI.$(id).textContent = "";
  for (const id of ["config-yaml", "config-set"]) UI.$(id).classList.remove("invalid");
  const message = UI.$("start-message");
  message.textContent = "";
  message.className = "message";
}

/** Put an API error beside the field it is about: the --set line or YAML key named by `param`. */
function showConfigError(err) {
  const param = err.param;
  const setLine = param ? UI.$("config-set").value.split("\n")
    .findIndex((l) => l.trim().replace(/^--set\s+/, "").split("=")[0].trim() === param) : -1;
  if (setLine >= 0 || param === "set") {  // "set": a malformed --set line
    UI.$("set-error").textContent = (setLine >= 0 ? "line " + (setLine + 1) + ": " : "") + err.message;
    UI.$("config-set").classList.add("invalid");
    if (setLine >= 0) selectLine(UI.$("config-set"), setLine + 1);
    return;
  }
  if (err.status === 400 || err.status === 422) {
    const line = param ? UI.yamlKeyLine(UI.$("config-yaml").value, param) : null;
    const where = [line ? "line " + line : "", param && !err.message.includes(param) ? param : ""].filter(Boolean);
    UI.$("yaml-error").textContent = (where.length ? where.join(", ") + ": " : "") + err.message;
    UI.$("config-yaml").classList.add("invalid");
    if (line) selectLine(UI.$("config-yaml"), line);
    return;
  }
  UI.$("start-message").textContent = err.message;
  UI.$("start-message").className = "message error";
}

function requestBody() {
  return { yaml: UI.$("config-yaml").value, set: UI.setLines(UI.$("config-set").value),
    resume: UI.$("resume-check").checked, overwrite: UI.$("overwrite-check").checked };
}

async function validate() {
  clearErrors();
  const { yaml, set } = requestBody();
  try {
    const answer = await UI.api("/api/validate", { method: "POST", body: { yaml, set } });
    UI.$("start-message").textContent = "valid: the run will be named " + answer.name;
    UI.$("start-message").className = "message ok";
    return true;
  } catch (err) {
    showConfigError(err);
    return false;
  }
}

async function startRun(button) {
  clearErrors();
  button.disabled = true;
  try {
    const answer = await UI.api("/api/runs", { method: "POST", body: requestBody() });
    location.hash = UI.runLink(answer.name);
  } catch (err) {
    showConfigError(err);
  } finally {
    button.disabled = false;
  }
}

function startForm(configs) {
  const select = UI.el("select", { id: "config-select", "aria-label": "shipped config" },
    UI.el("option", { value: "" }, "(write your own)"),
    configs.map((c) => UI.el("option", { value: c.path }, c.path)));
  const yaml = UI.el("textarea", { id: "config-yaml", rows: 18, spellcheck: "false",
    placeholder: "name: my-run\nmodel: smollm2-135m-instruct\ntask: sql-create-context\n..." });
  select.addEventListener("change", () => {
    const found = configs.find((c) => c.path === select.value);
    yaml.value = found ? found.text : "";
    clearErrors();
  });
  const start = UI.el("button", { id: "start-button", type: "button", class: "primary" }, "Start");
  start.addEventListener("click", () => startRun(start));
  return UI.el("div", { class: "form" },
    UI.el("label", { class: "field" }, "shipped config", select),
    UI.el("label", { class: "field" }, "config (YAML)", yaml),
    UI.el("div", { id: "yaml-error", class: "field-error", role: "alert" }),
    UI.el("label", { class: "field" }, "--set overrides, one key=value a line",
      UI.el("textarea", { id: "config-set", rows: 3, spellcheck: "false", placeholder: "train.lr=1e-3\ntrain.max_minutes=5" })),
    UI.el("div", { id: "set-error", class: "field-error", role: "alert" }),
    UI.el("div", { class: "row" },
      UI.el("label", {}, UI.el("input", { id: "resume-check", type: "checkbox" }), "resume from its last checkpoint"),
      UI.el("label", {}, UI.el("input", { id: "overwrite-check", type: "checkbox" }), "overwrite an earlier run of that name")),
    UI.el("div", { class: "row" },
      UI.el("button", { id: "validate-button", type: "button", onclick: validate }, "Validate"), start),
    UI.el("p", { id: "start-message", class: "message" }));
}

function queueList(queue) {
  const items = [];
  if (queue && queue.running) items.push(UI.el("li", {}, UI.el("a", { href: UI.runLink(queue.running) }, queue.running), " ", UI.badge("training")));
  for (const name of (queue && queue.queued) || []) items.push(UI.el("li", {}, UI.el("a", { href: UI.runLink(name) }, name), " ", UI.badge("queued")));
  return items.length ? UI.el("ol", {}, items) : UI.el("p", { class: "hint" }, "Nothing is training; a run you start begins at once.");
}

UI.views.start = async function (ctx) {
  const { configs } = await UI.api("/api/configs", { signal: ctx.signal() });
  if (!ctx.alive) return;
  const queue = UI.el("div", { id: "start-queue" });
  UI.$("view").replaceChildren(UI.el("div", { class: "view-head" }, UI.el("h1", {}, "Start a run")),
    startForm(configs), UI.el("h2", {}, "Queue"), queue);
  await ctx.poll(async () => {
    const body = await UI.api("/api/runs", { signal: ctx.signal() });
    if (ctx.alive) queue.replaceChildren(queueList(body.queue));
    return 2000;
  });
};

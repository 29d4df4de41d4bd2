"use strict";
/* #/runs: every run under the runs folder with its state, task, model, headline result and size;
   tick two or more to compare them. Refreshes every 2 s while a run is active, every 10 s otherwise. */

UI.compareSelection = new Set();

/** Rows trained on; counted from steps x batch, or estimated from tokens (marked "≈"). */
UI.fmtRowsSeen = function (row) {
  if (row.rows_seen === null || row.rows_seen === undefined) return "n/a";
  const estimated = row.rows_seen_from === "tokens";
  return UI.el("span", { title: estimated ? "estimated: train tokens / mean tokens of a row" : "steps × batch size × grad accum × GPUs" },
    (estimated ? "≈" : "") + UI.fmtNumber(row.rows_seen) + (row.train_rows ? " of " + UI.fmtNumber(row.train_rows) : ""));
};

UI.fmtTime = function (row) {
  const spent = row.wall_time_s === null || row.wall_time_s === undefined ? "n/a" : UI.fmtDuration(row.wall_time_s);
  return row.max_minutes ? spent + " of " + row.max_minutes + " min" : spent;
};

function runRow(row) {
  const check = UI.el("input", { type: "checkbox", class: "compare-check", value: row.name,
    "aria-label": "compare " + row.name, checked: UI.compareSelection.has(row.name),
    onchange: (event) => {
      if (event.target.checked) UI.compareSelection.add(row.name);
      else UI.compareSelection.delete(row.name);
      updateCompareButton();
    } });
  const name = UI.el("td", { class: "name" }, UI.el("a", { href: UI.runLink(row.name) }, row.name));
  if (row.message && row.state !== "finished") name.append(UI.el("div", { class: "sub" }, row.message));
  const badge = UI.badge(row.state);
  if (row.message) badge.title = row.message;
  return UI.el("tr", { class: "run-row", dataset: { run: row.name, state: row.state || "" } },
    UI.el("td", {}, check), name, UI.el("td", {}, badge),
    UI.el("td", { class: "task" }, row.task || "n/a"), UI.el("td", { class: "model" }, row.model || "n/a"),
    UI.el("td", { class: "headline" }, UI.fmtHeadline(row.headline)),
    UI.el("td", { class: "num" }, UI.fmtNumber(row.steps)), UI.el("td", { class: "num" }, UI.fmtRowsSeen(row)),
    UI.el("td", { class: "num" }, UI.fmtTime(row)), UI.el("td", {}, UI.fmtAgo(row.updated)));
}

function updateCompareButton() {
  const button = UI.$("compare-button");
  if (!button) return;
  const names = [...UI.compareSelection];
  button.disabled = names.length < 2;
  button.textContent = names.length ? "Compare " + names.length + " runs" : "Compare";
}

/** "training: a · queued: b, c": the ui's queue, and runs started elsewhere (a terminal) that are active. */
UI.queueText = function (queue, runs) {
  const queued = (queue && queue.queued) || [];
  const busy = runs.filter((r) => ["training", "evaluating"].includes(r.state) && !queued.includes(r.name)).map((r) => r.name);
  const parts = [];
  if (busy.length) parts.push("training or evaluating: " + busy.join(", "));
  if (queued.length) parts.push("queued: " + queued.join(", "));
  return parts.join(" · ") || "Nothing is training; a run you start begins at once.";
};

function runsTable(runs) {
  const head = ["", "Run", "State", "Task", "Model", "Result (base → LoRA)", "Steps", "Rows seen of train rows", "Time", "Updated"];
  return UI.el("div", { class: "table-wrap" }, UI.el("table", { id: "runs-table", class: "runs" },
    UI.el("thead", {}, UI.el("tr", {}, head.map((h) => UI.el("th", {}, h)))),
    UI.el("tbody", {}, runs.map(runRow))));
}

/** Show `runs`, changing only the cells that changed: a table redrawn under the pointer every 2 s
    would swallow clicks on its links and checkboxes. */
function updateTable(slot, runs) {
  const table = UI.$("runs-table");
  const old = table ? [...table.tBodies[0].rows] : [];
  if (!table || old.map((tr) => tr.dataset.run).join("\n") !== runs.map((r) => r.name).join("\n")) {
    slot.replaceChildren(runsTable(runs));
    return;
  }
  runs.forEach((run, i) => {
    const fresh = runRow(run);
    old[i].dataset.state = fresh.dataset.state;
    [...fresh.cells].forEach((cell, j) => {
      if (j > 0 && cell.innerHTML !== old[i].cells[j].innerHTML) old[i].cells[j].replaceWith(cell);
    });
  });
}

UI.views.runs = async function (ctx) {
  const view = UI.$("view");
  const queue = UI.el("p", { id: "runs-queue", class: "queue" });
  const compare = UI.el("button", { id: "compare-button", type: "button", class: "primary", disabled: true,
    onclick: () => { location.hash = "#/compare?runs=" + [...UI.compareSelection].map(encodeURIComponent).join(","); } },
  "Compare");
  const tableSlot = UI.el("div", {});
  view.replaceChildren(
    UI.el("div", { class: "view-head" }, UI.el("h1", {}, "Runs"), compare,
      UI.el("a", { class: "button", href: "#/start" }, "Start a run")),
    queue, tableSlot);
  await ctx.poll(async () => {
    const body = await UI.api("/api/runs", { signal: ctx.signal() });
    if (!ctx.alive) return null;
    const names = new Set(body.runs.map((r) => r.name));
    for (const name of [...UI.compareSelection]) if (!names.has(name)) UI.compareSelection.delete(name);
    queue.textContent = UI.queueText(body.queue, body.runs);
    if (body.runs.length) updateTable(tableSlot, body.runs);
    else tableSlot.replaceChildren(UI.el("p", { id: "runs-empty", class: "hint" }, "No runs yet. ",
      UI.el("a", { href: "#/start" }, "Start one"), " or run `loratune run CONFIG` with this runs folder."));
    updateCompareButton();
    return body.runs.some((r) => UI.isActive(r.state)) ? 2000 : 10000;
  });
};

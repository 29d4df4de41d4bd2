"use strict";
/* #/run/NAME/answers?filter=&metric=&sort=: the evaluation's held-out rows, base and LoRA answers
   side by side with each one's per-row scores and the judge's evidence (SQL: did it run, its rows
   against the gold rows; TAT-QA: the computed value, the calculation, the scale). Filters: all,
   wrong, fixed by LoRA, broken by LoRA; 100 rows a page with "Show more". */

const FILTERS = [["all", "all rows"], ["wrong", "wrong (LoRA)"], ["fixed", "fixed by LoRA"], ["broken", "broken by LoRA"]];
const SORTS = [["none", "evaluation order"], ["length", "shortest reference first"], ["-length", "longest reference first"]];
const PAGE = 100;

function fmtScore(value) {
  if (typeof value === "boolean") return value ? "1" : "0";
  return typeof value === "number" ? (Number.isInteger(value) ? String(value) : value.toFixed(3)) : String(value);
}

function scoreLine(scores, metric) {
  const entries = Object.entries(scores || {});
  if (!entries.length) return null;
  return UI.el("div", { class: "score" }, entries.map(([key, value], i) => [i ? " · " : "",
    UI.el(key === metric ? "b" : "span", {}, key + " " + fmtScore(value))]));
}

function rowsTable(rows, caption) {
  if (!rows || !rows.length) return UI.el("div", { class: "sub" }, caption + ": no rows");
  return UI.el("div", {}, UI.el("div", { class: "sub" }, caption), UI.el("table", { class: "mini" },
    UI.el("tbody", {}, rows.map((r) => UI.el("tr", {}, (Array.isArray(r) ? r : [r]).map((c) => UI.el("td", {}, c === null ? "NULL" : String(c))))))));
}

const rowCount = (n, word) => UI.fmtNumber(n) + " " + word + (n === 1 ? "" : "s");

/** The SQL judge's evidence for one answer: ran or not, its rows against the gold rows. */
function sqlEvidence(ev) {
  if (!ev) return null;
  const summary = ev.ran
    ? "ran · " + rowCount(ev.row_count, "row") + " vs " + rowCount(ev.gold_row_count, "gold row") + " · " + (ev.match ? "match" : "no match")
    : "did not run" + (ev.error ? ": " + ev.error : "");
  const box = UI.el("details", { class: "evidence sql", dataset: { match: String(Boolean(ev.match)) } },
    UI.el("summary", {}, "SQL " + summary));
  if (ev.ran && ev.error) box.append(UI.el("div", { class: "sub" }, "error: " + ev.error));
  box.append(UI.el("div", { class: "row-tables" }, rowsTable(ev.rows, "its rows"), rowsTable(ev.gold_rows, "gold rows")));
  return box;
}

/** The TAT-QA verdict for one answer: computed value, calculation, scale, EM/F1. */
function tatqaEvidence(v) {
  if (!v) return null;
  const answer = Array.isArray(v.answer) ? v.answer.join(" | ") : v.answer;
  return UI.el("div", { class: "evidence tatqa" },
    v.error ? UI.el("div", { class: "sub" }, "unreadable: " + v.error) : null,
    UI.el("div", {}, "value: ", UI.el("code", {}, answer === "" || answer === null || answer === undefined ? "(none)" : String(answer))),
    v.calculation ? UI.el("div", {}, "calculation: ", UI.el("code", {}, v.calculation)) : null,
    UI.el("div", {}, "scale: " + (v.scale || "(none)") + " · EM " + fmtScore(v.em) + " · F1 " + fmtScore(v.f1)));
}

function variantBox(kind, title, text, row, metric) {
  const box = UI.el("div", { class: "variant " + kind }, UI.el("h4", {}, title), UI.el("pre", {}, text ?? ""));
  if (kind === "reference") return box;
  box.append(scoreLine((row.scores || {})[kind], metric) || "",
    sqlEvidence((row.evidence || {})[kind]) || "", tatqaEvidence((row.verdicts || {})[kind]) || "");
  return box;
}

function verdictOf(row, metric) {
  const base = ((row.scores || {}).base || {})[metric], lora = ((row.scores || {}).lora || {})[metric];
  if (typeof base !== "number" || typeof lora !== "number") return "";
  return lora > base ? "fixed" : lora < base ? "broken" : "same";
}

/** The prompt on one line, chat-template tokens dropped, cut at 160 characters. */
function promptPreview(prompt) {
  const text = String(prompt || "").replace(/<\|[^|]*\|>/g, " ").replace(/\s+/g, " ").trim();
  return text.length > 160 ? text.slice(0, 159) + "…" : text;
}

function answerRow(row, metric) {
  const verdict = verdictOf(row, metric);
  const preview = promptPreview(row.prompt);
  return UI.el("div", { class: "answer-row", dataset: { index: String(row.index), verdict } },
    UI.el("div", { class: "row-head" }, UI.el("b", {}, "#" + row.index),
      row.db_id ? UI.el("span", { class: "sub" }, " db " + row.db_id) : null,
      verdict && verdict !== "same" ? UI.el("span", { class: "tag " + verdict }, verdict === "fixed" ? "fixed by LoRA" : "broken by LoRA") : null),
    UI.el("details", { class: "prompt" }, UI.el("summary", {}, preview || "prompt"), UI.el("pre", {}, row.prompt || "")),
    UI.el("div", { class: "variants" }, variantBox("reference", "reference", row.reference, row, metric),
      variantBox("base", "base", row.base, row, metric), variantBox("lora", "LoRA", row.lora, row, metric)));
}

function selectOf(id, label, options, value, onchange) {
  const select = UI.el("select", { id, "aria-label": label, onchange },
    options.map(([v, text]) => UI.el("option", { value: v }, text)));
  select.value = value;
  return UI.el("label", {}, label, select);
}

UI.views.answers = async function (ctx, name, query) {
  const params = { filter: query.get("filter") || "all", metric: query.get("metric") || "", sort: query.get("sort") || "none" };
  const fetchPage = (offset) => {
    const q = new URLSearchParams({ filter: params.filter, sort: params.sort, offset: String(offset), limit: String(PAGE) });
    if (params.metric) q.set("metric", params.metric);
    return UI.api("/api/runs/" + encodeURIComponent(name) + "/answers?" + q, { signal: ctx.signal() });
  };
  const head = UI.el("div", { class: "view-head" }, UI.el("h1", {}, "Answers of ", UI.el("a", { href: UI.runLink(name) }, name)));
  let first;
  try {
    first = await fetchPage(0);
  } catch (err) {
    if (!ctx.alive || err.name === "AbortError") return;
    UI.$("view").replaceChildren(head, UI.errorBox(err));  // 409: not evaluated, or no per-row scores
    return;
  }
  if (!ctx.alive) return;
  params.metric = first.metric;
  const go = (change) => {
    const next = Object.assign({}, params, change);
    location.hash = UI.runLink(name) + "/answers?" + new URLSearchParams(next);
  };
  const list = UI.el("div", { id: "answers-list" });
  const count = UI.el("span", { id: "answers-count", class: "sub" });
  const more = UI.el("button", { id: "answers-more", type: "button" }, "Show more");
  let loaded = 0;
  const append = (page) => {
    list.append(...page.rows.map((r) => answerRow(r, page.metric)));
    loaded += page.rows.length;
    count.textContent = UI.fmtNumber(page.total) + (page.total === 1 ? " row matches" : " rows match")
      + (loaded < page.total ? "; showing the first " + loaded : "");
    more.hidden = loaded >= page.total || !page.rows.length;
    if (!loaded) list.replaceChildren(UI.el("p", { class: "hint" }, "No row matches this filter."));
  };
  more.addEventListener("click", async () => {
    more.disabled = true;
    try { append(await fetchPage(loaded)); } catch (err) { UI.setStatus(err.message, true); } finally { more.disabled = false; }
  });
  UI.$("view").replaceChildren(head,
    UI.el("div", { class: "controls" },
      selectOf("answers-filter", "show", FILTERS, params.filter, (e) => go({ filter: e.target.value })),
      selectOf("answers-metric", "metric", first.metrics.map((m) => [m, m]), params.metric, (e) => go({ metric: e.target.value })),
      selectOf("answers-sort", "order", SORTS, params.sort, (e) => go({ sort: e.target.value })), count),
    list, more);
  append(first);
};

"use strict";
/* #/compare?runs=a,b: the `loratune compare` table of the chosen runs and their curves on shared
   charts (train loss, eval loss, accuracy against minutes), one colour per run. Without two runs
   named, a list of runs to tick. */

function comparePicker(runs) {
  const chosen = new Set();
  const go = UI.el("button", { id: "compare-button", type: "button", class: "primary", disabled: true,
    onclick: () => { location.hash = "#/compare?runs=" + [...chosen].map(encodeURIComponent).join(","); } }, "Compare");
  const items = runs.map((r) => UI.el("li", {}, UI.el("label", {},
    UI.el("input", { type: "checkbox", class: "compare-check", value: r.name, onchange: (e) => {
      if (e.target.checked) chosen.add(r.name); else chosen.delete(r.name);
      go.disabled = chosen.size < 2;
    } }), r.name, " ", UI.badge(r.state))));
  return [UI.el("p", { class: "hint" }, "Tick two or more runs to compare."), UI.el("ul", { class: "pick" }, items), go];
}

function compareCharts(curves) {
  const names = Object.keys(curves);
  const series = (key) => names.map((name) => ({ name, points: (curves[name] || {})[key] || [] }));
  const box = UI.el("div", { class: "charts" });
  box.append(
    UI.chart("chart-compare-train-loss", "train loss", series("train_loss"), { xLabel: "step", yLabel: "loss" }),
    UI.chart("chart-compare-eval-loss", "eval loss", series("eval_loss"), { xLabel: "step", yLabel: "loss" }),
    UI.chart("chart-compare-accuracy", "accuracy against training minutes", series("accuracy"),
      { xLabel: "minutes", yLabel: "accuracy", empty: "no accuracy-over-time file in these runs" }));
  return box;
}

UI.views.compare = async function (ctx, _name, query) {
  const names = (query.get("runs") || "").split(",").map((s) => s.trim()).filter(Boolean);
  const head = UI.el("div", { class: "view-head" }, UI.el("h1", {}, "Compare runs"));
  if (names.length < 2) {
    const { runs } = await UI.api("/api/runs", { signal: ctx.signal() });
    if (ctx.alive) UI.$("view").replaceChildren(head, ...comparePicker(runs));
    return;
  }
  const body = await UI.api("/api/compare?runs=" + names.map(encodeURIComponent).join(","), { signal: ctx.signal() });
  if (!ctx.alive) return;
  const links = names.map((n, i) => [i ? ", " : "", UI.el("a", { href: UI.runLink(n) }, n)]);
  UI.$("view").replaceChildren(head, UI.el("p", { class: "sub" }, "runs: ", links),
    UI.el("div", { id: "compare-table" }, UI.markdown(body.table)), compareCharts(body.curves || {}));
};

"use strict";
/* #/run/NAME: one run as it trains: step of max steps, time left, tokens/s, the loss and accuracy
   curves and the tail of its log, polled every 2 s while it is queued, training or evaluating (every
   10 s otherwise, so a run resumed from the command line shows up). Stop asks training to end at
   the next step with a checkpoint; Resume queues `loratune run CONFIG --resume` for it. */

function stat(id, label) {
  return UI.el("div", { class: "stat" }, UI.el("div", { class: "label" }, label), UI.el("div", { id, class: "value" }, "n/a"));
}

function runSkeleton(name) {
  const bar = UI.el("div", { class: "progress" }, UI.el("div", { id: "run-progress-bar", style: "width:0%" }));
  return [
    UI.el("div", { class: "view-head" },
      UI.el("h1", { id: "run-name" }, name), UI.el("span", { id: "run-state", class: "badge" }),
      UI.el("span", { class: "spacer" }),
      UI.el("button", { id: "stop-button", type: "button", hidden: true }, "Stop"),
      UI.el("button", { id: "resume-button", type: "button", hidden: true }, "Resume"),
      UI.el("a", { id: "answers-link", class: "button", href: UI.runLink(name) + "/answers", hidden: true }, "Answers"),
      UI.el("a", { id: "chat-link", class: "button", href: "#/chat/" + encodeURIComponent(name), hidden: true }, "Chat")),
    UI.el("p", { id: "run-message", class: "message" }),
    UI.el("div", { class: "stats" },
      UI.el("div", { class: "stat wide" }, UI.el("div", { class: "label" }, "progress"),
        UI.el("div", { id: "run-progress", class: "value" }, "n/a"), bar),
      stat("run-eta", "time left"), stat("run-speed", "tokens/s"), stat("run-elapsed", "elapsed"),
      stat("run-headline", "result (base → LoRA)")),
    UI.el("div", { id: "run-charts", class: "charts" }),
    UI.el("h2", {}, "Log"),
    UI.el("pre", { id: "log-tail", class: "log" }, ""),
    UI.el("details", { class: "block" }, UI.el("summary", {}, "config.yaml"), UI.el("pre", { id: "run-config" })),
    UI.el("div", { id: "run-metrics", class: "metrics" }),
  ];
}

function showDetail(detail) {
  UI.$("run-headline").textContent = UI.fmtHeadline(detail.headline);
  UI.$("run-config").textContent = detail.config || "(no config.yaml)";
  const metrics = UI.$("run-metrics");
  metrics.replaceChildren();
  if (detail.metrics_md) metrics.append(UI.el("h2", {}, "Evaluation"), UI.markdown(detail.metrics_md));
  const evaluated = Boolean(detail.headline) || detail.state === "finished";
  UI.$("answers-link").hidden = !evaluated;
  UI.$("chat-link").hidden = !["trained", "finished", "evaluating"].includes(detail.state);
}

function showState(state, message) {
  const badge = UI.$("run-state");
  badge.textContent = state;
  badge.dataset.state = state;
  UI.$("run-message").textContent = message || "";
  UI.$("stop-button").hidden = !["queued", "training"].includes(state);
  UI.$("resume-button").hidden = state !== "interrupted";
}

function showProgress(live) {
  const { step, max_steps: max } = live;
  const known = typeof step === "number" && typeof max === "number" && max > 0;
  UI.$("run-progress").textContent = known ? "step " + step + " of " + max + " (" + Math.round(100 * step / max) + "%)"
    : typeof step === "number" ? "step " + step : "n/a";
  UI.$("run-progress-bar").style.width = known ? Math.min(100, 100 * step / max) + "%" : "0%";
  UI.$("run-eta").textContent = UI.isActive(live.state) && live.eta_s !== null && live.eta_s !== undefined
    ? UI.fmtDuration(live.eta_s) : "n/a";
  UI.$("run-speed").textContent = UI.fmtNumber(live.tokens_per_s, 0);
  UI.$("run-elapsed").textContent = UI.fmtDuration(live.elapsed_s);
}

function showCurves(live) {
  const charts = UI.$("run-charts");
  UI.putChart(charts, "chart-train-loss", "train loss", [{ name: "train loss", points: live.train_loss || [] }],
    { xLabel: "step", yLabel: "loss", empty: "no train loss logged yet" });
  UI.putChart(charts, "chart-eval-loss", "eval loss", [{ name: "eval loss", points: live.eval_loss || [] }],
    { xLabel: "step", yLabel: "loss", empty: "no eval loss yet" });
  UI.putChart(charts, "chart-accuracy", "accuracy against training minutes",
    [{ name: "accuracy", points: live.accuracy || [] }],
    { xLabel: "minutes", yLabel: "accuracy", empty: "no accuracy-over-time file for this run" });
}

/** A console line as a terminal leaves it: progress bars redraw with \r (keep the last draw), and
    cursor movements (ESC [ ... ) are dropped. */
function terminalLine(line) {
  const draws = line.replace(/\x1b\[[0-9;]*[A-Za-z]/g, "").split("\r").filter((s) => s.trim());
  return draws.length ? draws[draws.length - 1] : "";
}

function showLog(lines) {
  const pre = UI.$("log-tail");
  const atEnd = pre.scrollTop + pre.clientHeight >= pre.scrollHeight - 4;
  pre.textContent = (lines || []).map(terminalLine).filter(Boolean).join("\n") || "(no log yet)";
  if (atEnd) pre.scrollTop = pre.scrollHeight;
}

function wireButtons(name, detail) {
  const stop = UI.$("stop-button");
  stop.addEventListener("click", async () => {
    stop.disabled = true;
    try {
      const answer = await UI.api("/api/runs/" + encodeURIComponent(name) + "/stop", { method: "POST" });
      if (answer.state === "removed") { location.hash = "#/runs"; return; }
      showState("stopping", "stop requested: training ends at its next step and saves a checkpoint");
    } catch (err) {
      UI.setStatus(err.message, true);
    } finally {
      stop.disabled = false;
    }
  });
  const resume = UI.$("resume-button");
  resume.addEventListener("click", async () => {
    resume.disabled = true;
    try {
      await UI.api("/api/runs", { method: "POST", body: { yaml: detail.config || "", set: [], resume: true } });
      UI.route();  // queued: draw the run again, polled every 2 s
    } catch (err) {
      UI.setStatus(err.message, true);
    } finally {
      resume.disabled = false;
    }
  });
}

UI.views.run = async function (ctx, name) {
  const path = "/api/runs/" + encodeURIComponent(name);
  let detail = await UI.api(path, { signal: ctx.signal() });
  if (!ctx.alive) return;
  UI.$("view").replaceChildren(...runSkeleton(name));
  showState(detail.state, detail.message);
  showDetail(detail);
  wireButtons(name, detail);
  let shownState = detail.state;
  await ctx.poll(async () => {
    const live = await UI.api(path + "/live?log_lines=50", { signal: ctx.signal() });
    if (!ctx.alive) return null;
    const stopping = UI.$("run-state").dataset.state === "stopping" && UI.isActive(live.state);
    if (!stopping) showState(live.state, live.message);
    showProgress(live);
    showCurves(live);
    showLog(live.log_tail);
    if (live.state !== shownState) {  // the run moved on: its result and links may have changed
      shownState = live.state;
      detail = await UI.api(path, { signal: ctx.signal() });
      if (ctx.alive) showDetail(detail);
    }
    return UI.isActive(live.state) ? 2000 : 10000;
  });
};

"use strict";
/* loratune ui, the core: API calls (with the API key when the server wants one), hash routes,
   polling that stops when the view changes, and small DOM and number helpers. Each view lives in
   its own file (runs.js, run.js, start.js, answers.js, compare.js, chat.js) and registers itself
   in UI.views; charts.js draws the SVG charts, markdown.js renders the server's markdown tables.
   The files are plain scripts loaded in order by index.html (no build step): their top-level
   names share one scope, so each file's helpers have names of their own.

   Stable element ids and classes (the browser test and docs/ui.md rely on them):
   every view        #view  #nav-runs  #nav-start  #nav-compare  #key-label  #key  #status  .error-box
   #/runs            #runs-table  tr.run-row[data-run]  .badge[data-state]  input.compare-check[value]
                     #compare-button  #runs-queue  #runs-empty
   #/run/NAME        #run-name  #run-state  #run-message  #run-progress  #run-progress-bar  #run-eta
                     #run-speed  #run-elapsed  #run-headline  #stop-button  #resume-button
                     #answers-link  #chat-link  #chart-train-loss  #chart-eval-loss  #chart-accuracy
                     #log-tail  #run-config  #run-metrics
   charts            figure.chart > svg[data-points]  polyline.series[data-series][data-points]  .legend
   #/start           #config-select  #config-yaml  #config-set  #yaml-error  #set-error  #resume-check
                     #overwrite-check  #validate-button  #start-button  #start-message  #start-queue
   #/run/NAME/answers  #answers-filter  #answers-metric  #answers-sort  #answers-count  #answers-list
                     .answer-row[data-index]  details.prompt  .variant.reference|.base|.lora  .score
                     .evidence  #answers-more
   #/compare?runs=a,b  #compare-table  #chart-compare-train-loss  #chart-compare-eval-loss
                     #chart-compare-accuracy
   #/chat/NAME       #chat-input  #chat-send  #chat-stop  #chat-reset  #chat-max-tokens
                     #chat-temperature  #chat-hint  #chat-base  #chat-lora
                     .msg.assistant[data-state=streaming|done|error] > .content, .meta, .note
*/

const UI = {
  views: {},
  key: localStorage.getItem("loratune-api-key") || "",
  ctx: null,
  ACTIVE: ["queued", "training", "evaluating", "stopping"],
};

/** An error the API answered with: its message, the config key it names, and the HTTP status. */
class ApiError extends Error {
  constructor(message, status, param) {
    super(message);
    this.status = status;
    this.param = param || null;
  }
}

UI.$ = (id) => document.getElementById(id);

/** A DOM element: el("a", {href: "#/runs", class: "x"}, "text", child, ...). Text is never parsed as HTML. */
UI.el = function (tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (name === "class") node.className = value;
    else if (name === "dataset") Object.assign(node.dataset, value);
    else if (name.startsWith("on")) node.addEventListener(name.slice(2), value);
    else if (name in node && typeof value !== "string") node[name] = value;
    else node.setAttribute(name, value === true ? "" : value);
  }
  for (const child of children.flat(Infinity)) {
    if (child === null || child === undefined || child === false) continue;
    node.append(child instanceof Node ? child : String(child));
  }
  return node;
};

UI.headers = function (json) {
  const h = json ? { "Content-Type": "application/json" } : {};
  if (UI.key) h["Authorization"] = "Bearer " + UI.key;
  return h;
};

/** Call the API and return its JSON. A 401 shows the API key field; other errors throw ApiError
    with the server's own message (`{"error": {"message", "param"}}`). */
UI.api = async function (path, options) {
  const opts = options || {};
  const init = { method: opts.method || "GET", headers: UI.headers(opts.body !== undefined) };
  if (opts.body !== undefined) init.body = JSON.stringify(opts.body);
  if (opts.signal) init.signal = opts.signal;
  let response;
  try {
    response = await fetch(path, init);
  } catch (err) {
    if (err.name === "AbortError") throw err;
    throw new ApiError("cannot reach the loratune ui server (" + err.message + ")", 0);
  }
  const body = await response.json().catch(() => null);
  if (response.status === 401) {
    UI.askForKey();
    throw new ApiError("this server needs an API key: enter it above", 401);
  }
  if (!response.ok) {
    const error = (body && body.error) || {};
    throw new ApiError(error.message || response.status + " " + response.statusText, response.status, error.param);
  }
  return body;
};

UI.askForKey = function () {
  UI.$("key-label").hidden = false;
  UI.setStatus("API key required", true);
};

UI.setStatus = function (text, isError) {
  UI.$("status").textContent = text || "";
  UI.$("status").className = isError ? "error" : "";
};

/** A box with an error's message, for a view that cannot show what it was asked for. */
UI.errorBox = function (err) {
  const text = err && err.message ? err.message : String(err);
  return UI.el("div", { class: "error-box", role: "alert" }, text);
};

UI.showError = function (err) {
  if (err && err.name === "AbortError") return;
  UI.$("view").replaceChildren(UI.errorBox(err));
};

// ---------------------------------------------------------------- formatting

UI.fmtNumber = function (value, digits) {
  if (value === null || value === undefined || Number.isNaN(value)) return "n/a";
  if (typeof value !== "number") return String(value);
  if ((Number.isInteger(value) && digits === undefined) || digits === 0) return Math.round(value).toLocaleString("en-US");
  return value.toFixed(digits === undefined ? 3 : digits);
};

/** 754 -> "12 min 34 s"; 4000 -> "1 h 6 min". */
UI.fmtDuration = function (seconds) {
  if (seconds === null || seconds === undefined || Number.isNaN(seconds)) return "n/a";
  const s = Math.max(0, Math.round(seconds));
  if (s < 60) return s + " s";
  const m = Math.floor(s / 60);
  if (m < 60) return m + " min " + String(s % 60).padStart(2, "0") + " s";
  return Math.floor(m / 60) + " h " + (m % 60) + " min";
};

/** An ISO time as "3 min ago" (the exact time in the title). */
UI.fmtAgo = function (iso) {
  if (!iso) return UI.el("span", {}, "n/a");
  const then = Date.parse(iso);
  if (Number.isNaN(then)) return UI.el("span", {}, String(iso));
  const ago = (Date.now() - then) / 1000;
  const text = ago < 45 ? "just now" : ago < 3600 ? Math.round(ago / 60) + " min ago"
    : ago < 86400 ? Math.round(ago / 3600) + " h ago" : new Date(then).toISOString().slice(0, 10);
  return UI.el("time", { datetime: iso, title: iso }, text);
};

/** "rougeL 0.412 → 0.538 (+0.126 [+0.05, +0.20])" from a RunRow headline. */
UI.fmtHeadline = function (headline) {
  if (!headline) return "not evaluated";
  const parts = [headline.metric + " " + UI.fmtNumber(headline.base) + " → " + UI.fmtNumber(headline.lora)];
  if (typeof headline.base === "number" && typeof headline.lora === "number") {
    let delta = UI.signed(headline.lora - headline.base);
    if (typeof headline.low === "number" && typeof headline.high === "number") {
      delta += " [" + UI.signed(headline.low) + ", " + UI.signed(headline.high) + "]";
    }
    parts.push("(" + delta + ")");
  }
  return parts.join(" ");
};

UI.signed = (x) => (x >= 0 ? "+" : "") + x.toFixed(3);

UI.badge = function (state) {
  return UI.el("span", { class: "badge", dataset: { state: state || "unknown" } }, state || "unknown");
};

UI.isActive = (state) => UI.ACTIVE.includes(state);

UI.runLink = (name) => "#/run/" + encodeURIComponent(name);

// ---------------------------------------------------------------- routes and polling

/** `#/run/NAME/answers?filter=fixed` -> {parts: ["run", "NAME", "answers"], query: URLSearchParams}. */
UI.parseHash = function () {
  const hash = location.hash.replace(/^#\/?/, "");
  const cut = hash.indexOf("?");
  const path = cut >= 0 ? hash.slice(0, cut) : hash;
  const query = new URLSearchParams(cut >= 0 ? hash.slice(cut + 1) : "");
  return { parts: path.split("/").filter(Boolean).map(decodeURIComponent), query };
};

UI.pickView = function (parts) {
  if (parts[0] === "run" && parts[1] && parts[2] === "answers") return ["answers", parts[1]];
  if (parts[0] === "run" && parts[1]) return ["run", parts[1]];
  if (parts[0] === "chat" && parts[1]) return ["chat", parts[1]];
  if (parts[0] === "start") return ["start", null];
  if (parts[0] === "compare") return ["compare", null];
  return ["runs", null];
};

/** Leave the current view (its timers and requests end) and draw the one the hash names. */
UI.route = function () {
  if (UI.ctx) UI.ctx.leave();
  const { parts, query } = UI.parseHash();
  const [view, name] = UI.pickView(parts);
  const ctx = UI.newContext();
  UI.ctx = ctx;
  for (const link of document.querySelectorAll("nav a")) link.classList.toggle("current", link.id === "nav-" + view);
  UI.setStatus("");
  UI.$("view").dataset.view = view;
  UI.$("view").replaceChildren(UI.el("p", { class: "hint" }, "Loading…"));
  Promise.resolve(UI.views[view](ctx, name, query)).catch((err) => ctx.alive && UI.showError(err));
};

/** What a view holds while shown: `alive` turns false when the user leaves it; its timers are
    cleared then, and requests made with `ctx.signal()` or a controller in `ctx.controllers` aborted. */
UI.newContext = function () {
  const left = new AbortController();
  const ctx = { alive: true, timers: new Set(), controllers: new Set([left]) };
  ctx.leave = () => {
    ctx.alive = false;
    ctx.timers.forEach(clearTimeout);
    ctx.controllers.forEach((c) => c.abort());
  };
  ctx.signal = () => left.signal;
  ctx.later = (fn, ms) => {
    const timer = setTimeout(() => { ctx.timers.delete(timer); if (ctx.alive) fn(); }, ms);
    ctx.timers.add(timer);
  };
  /* Call `fn` now and again after the delay it returns (null: stop), never two at once. */
  ctx.poll = (fn) => {
    let failing = false;
    const tick = async () => {
      let next = null;
      try {
        next = await fn();
        if (failing) UI.setStatus("");
        failing = false;
      } catch (err) {
        if (err.name === "AbortError" || !ctx.alive) return;
        if (err.status === 401) { UI.showError(err); return; }  // retried when a key is entered
        UI.setStatus(err.message, true);
        failing = true;
        next = 5000;
      }
      if (next && ctx.alive) ctx.later(tick, next);
    };
    return tick();
  };
  return ctx;
};

UI.start = function () {
  UI.$("key").value = UI.key;
  UI.$("key").addEventListener("change", () => {
    const key = UI.$("key").value.trim();
    if (key === UI.key) return;  // a blur after the same key: redrawing would swallow the click that caused it
    UI.key = key;
    localStorage.setItem("loratune-api-key", UI.key);
    UI.route();
  });
  window.addEventListener("hashchange", UI.route);
  UI.route();
};

document.addEventListener("DOMContentLoaded", UI.start);

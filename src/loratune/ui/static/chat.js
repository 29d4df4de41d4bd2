"use strict";
/* #/chat/NAME: one question, answered by the base model and by the run's adapter side by side,
   both streamed from the OpenAI-compatible routes under /api/chat/v1 (the same server code as
   `loratune serve`), each with its tokens/s. A chat adapter remembers the conversation per side
   until "New chat"; when it outgrows the context, the oldest exchanges are dropped and noted. */

function hintFor(card) {
  if (!card) return "Each message is answered on its own.";
  if (card.task_family === "sql") return "Send a question followed by the CREATE TABLE statements of its tables; the adapter answers with SQL.";
  if (card.multi_turn) return "A chat model: each side remembers its conversation until you start a new chat.";
  if (card.task) return "Adapter for " + card.task + ": each message is answered on its own, in the prompt format it was trained on.";
  return "Each message is answered on its own.";
}

function bubble(column, role, who, text) {
  const div = UI.el("div", { class: "msg " + role }, UI.el("span", { class: "who" }, who), UI.el("span", { class: "content" }, text));
  column.querySelector(".log").append(div);
  column.querySelector(".log").scrollTop = column.querySelector(".log").scrollHeight;
  return div;
}

function addLine(div, cls, text) {
  div.append(UI.el("span", { class: cls }, text));
}

/** Read an SSE stream of chat.completion.chunk objects into `content`; returns {usage, finish}. */
async function readStream(response, reply, content) {
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "", usage = null, finish = null;
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buffer += decoder.decode(value, { stream: true });
    let cut;
    while ((cut = buffer.indexOf("\n\n")) >= 0) {
      const line = buffer.slice(0, cut).trim();
      buffer = buffer.slice(cut + 2);
      if (!line.startsWith("data:")) continue;
      const data = line.slice(5).trim();
      if (data === "[DONE]") continue;
      const chunk = JSON.parse(data);
      if (chunk.error) throw new Error(chunk.error.message);
      if (chunk.warnings) chunk.warnings.forEach((w) => addLine(reply, "note", "note: " + w));
      if (chunk.usage) usage = chunk.usage;
      const choice = chunk.choices && chunk.choices[0];
      if (choice && choice.delta && choice.delta.content) content.textContent += choice.delta.content;
      if (choice && choice.finish_reason) finish = choice.finish_reason;
    }
  }
  return { usage, finish };
}

/** POST the conversation, dropping the oldest exchanges while the server says it does not fit. */
async function openStream(side, text, signal) {
  let history = side.multiTurn ? side.history.slice() : [];
  let dropped = 0;
  for (;;) {
    const request = { model: side.model, messages: history.concat([{ role: "user", content: text }]), stream: true,
      stream_options: { include_usage: true }, temperature: Number(UI.$("chat-temperature").value),
      max_tokens: Number(UI.$("chat-max-tokens").value) };
    const response = await fetch("/api/chat/v1/chat/completions", { method: "POST", headers: UI.headers(true),
      body: JSON.stringify(request), signal });
    if (response.ok) return { response, dropped, history };
    if (response.status === 401) UI.askForKey();
    const error = ((await response.json().catch(() => ({}))).error) || {};
    if (error.code === "context_length_exceeded" && history.length) {
      history = history.slice(2);
      dropped += 1;
      continue;
    }
    throw new Error(error.message || response.status + " " + response.statusText);
  }
}

/** One side's answer to `text`, streamed into its column. */
async function answerOn(side, text, signal) {
  const reply = bubble(side.column, "assistant", side.label, "");
  reply.dataset.state = "streaming";
  const content = reply.querySelector(".content");
  const started = performance.now();
  try {
    const { response, dropped, history } = await openStream(side, text, signal);
    if (dropped) {
      side.history = history;
      addLine(reply, "note", "note: the conversation no longer fits the model's context; dropped the "
        + (dropped === 1 ? "oldest exchange" : dropped + " oldest exchanges"));
    }
    const { usage, finish } = await readStream(response, reply, content);
    const seconds = (performance.now() - started) / 1000;
    const parts = usage ? [usage.completion_tokens + " tokens", (usage.completion_tokens / seconds).toFixed(1) + " tokens/s"] : [];
    parts.push(seconds.toFixed(1) + " s", finish === "length" ? "stopped at max tokens" : "done");
    addLine(reply, "meta", parts.join(" · "));
    reply.dataset.state = "done";
    if (side.multiTurn) side.history.push({ role: "user", content: text }, { role: "assistant", content: content.textContent });
  } catch (err) {
    if (err.name === "AbortError") {
      addLine(reply, "meta", "stopped");
      reply.dataset.state = "done";
    } else {
      reply.classList.add("failed");
      content.textContent = content.textContent || String(err.message || err);
      reply.dataset.state = "error";
    }
  }
}

function chatSkeleton(name) {
  const column = (id, title) => UI.el("section", { id, class: "chat-col" }, UI.el("h3", {}, title), UI.el("div", { class: "log" }));
  return [
    UI.el("div", { class: "view-head" }, UI.el("h1", {}, "Chat: base vs ", UI.el("a", { href: UI.runLink(name) }, name)),
      UI.el("span", { class: "spacer" }),
      UI.el("label", {}, "temperature", UI.el("input", { id: "chat-temperature", type: "number", min: "0", max: "2", step: "0.1", value: "0" })),
      UI.el("label", {}, "max tokens", UI.el("input", { id: "chat-max-tokens", type: "number", min: "1", max: "4096", step: "1", value: "128" })),
      UI.el("button", { id: "chat-reset", type: "button", title: "start a new conversation" }, "New chat")),
    UI.el("p", { id: "chat-hint", class: "hint" }, "Loading the base model and the adapter…"),
    UI.el("div", { class: "chat-cols" }, column("chat-base", "base"), column("chat-lora", "LoRA: " + name)),
    UI.el("div", { class: "composer" },
      UI.el("textarea", { id: "chat-input", rows: 2, disabled: true, placeholder: "Type a message. Enter sends, Shift+Enter adds a line." }),
      UI.el("button", { id: "chat-send", type: "button", class: "primary", disabled: true }, "Send"),
      UI.el("button", { id: "chat-stop", type: "button", hidden: true }, "Stop")),
  ];
}

async function modelCards(signal) {
  try {
    const body = await UI.api("/api/chat/v1/models", { signal });
    return Object.fromEntries((body.data || []).map((card) => [card.id, card]));
  } catch (err) {
    if (err.name === "AbortError") throw err;
    return {};  // the hint and the memory of the conversation fall back to "each message on its own"
  }
}

UI.views.chat = async function (ctx, name) {
  UI.$("view").replaceChildren(...chatSkeleton(name));
  const opened = await UI.api("/api/chat/open", { method: "POST", body: { run: name }, signal: ctx.signal() });
  const cards = await modelCards(ctx.signal());
  if (!ctx.alive) return;
  const [baseId, loraId] = [opened.models[0], opened.models[opened.models.length - 1]];
  const sides = [
    { model: baseId, label: "base", column: UI.$("chat-base"), history: [], multiTurn: Boolean((cards[baseId] || {}).multi_turn) },
    { model: loraId, label: loraId, column: UI.$("chat-lora"), history: [], multiTurn: Boolean((cards[loraId] || {}).multi_turn) },
  ];
  UI.$("chat-hint").textContent = hintFor(cards[loraId]);
  let controller = null;
  const busy = (on) => {
    UI.$("chat-send").disabled = on;
    UI.$("chat-stop").hidden = !on;
  };
  const send = async () => {
    const text = UI.$("chat-input").value.trim();
    if (!text || controller) return;
    UI.$("chat-input").value = "";
    for (const side of sides) bubble(side.column, "user", "you", text);
    controller = new AbortController();
    ctx.controllers.add(controller);
    busy(true);
    await Promise.all(sides.map((side) => answerOn(side, text, controller.signal)));
    ctx.controllers.delete(controller);
    controller = null;
    if (ctx.alive) { busy(false); UI.$("chat-input").focus(); }
  };
  UI.$("chat-send").addEventListener("click", send);
  UI.$("chat-stop").addEventListener("click", () => controller && controller.abort());
  UI.$("chat-reset").addEventListener("click", () => {
    if (controller) controller.abort();
    for (const side of sides) { side.history = []; side.column.querySelector(".log").replaceChildren(); }
  });
  UI.$("chat-input").addEventListener("keydown", (event) => {
    if (event.key === "Enter" && !event.shiftKey && !event.isComposing) { event.preventDefault(); send(); }
  });
  UI.$("chat-input").disabled = false;
  UI.$("chat-send").disabled = false;
  UI.$("chat-input").focus();
};

"use strict";
/* The markdown the server sends (metrics.md, `loratune compare` tables) as DOM: headings, tables,
   code blocks and paragraphs. Cells come escaped by loratune's md_cell (HTML entities, `\|`, <br>);
   they are unescaped and set as text, so nothing in them is parsed as HTML. */

UI.unescapeCell = function (text) {
  return text.replace(/\\\|/g, "|").replace(/&lt;/g, "<").replace(/&gt;/g, ">").replace(/&quot;/g, "\"")
    .replace(/&#x27;/g, "'").replace(/&amp;/g, "&");
};

/** A table row's cells: split on `|` that is not escaped, the outer pipes dropped. */
UI.splitRow = function (line) {
  const cells = [];
  let cell = "";
  for (let i = 0; i < line.length; i++) {
    if (line[i] === "\\" && line[i + 1] === "|") { cell += "\\|"; i++; continue; }
    if (line[i] === "|") { cells.push(cell); cell = ""; continue; }
    cell += line[i];
  }
  cells.push(cell);
  return cells.slice(1, -1).map((c) => c.trim());
};

/** A cell's text with `<br>` as line breaks. */
UI.cellNodes = function (text) {
  const nodes = [];
  text.split(/<br\s*\/?>/).forEach((piece, i) => {
    if (i) nodes.push(UI.el("br"));
    nodes.push(UI.unescapeCell(piece.replace(/\*\*/g, "")));
  });
  return nodes;
};

UI.markdownTable = function (lines) {
  const rows = lines.filter((line, i) => !(i === 1 && /^\|[\s:|-]+\|$/.test(line.trim()))).map(UI.splitRow);
  const head = UI.el("thead", {}, UI.el("tr", {}, rows[0].map((c) => UI.el("th", {}, UI.cellNodes(c)))));
  const body = UI.el("tbody", {}, rows.slice(1).map((r) => UI.el("tr", {}, r.map((c) => UI.el("td", {}, UI.cellNodes(c))))));
  return UI.el("div", { class: "table-wrap" }, UI.el("table", { class: "md" }, head, body));
};

/** A block of markdown as a document fragment. */
UI.markdown = function (text) {
  const out = document.createDocumentFragment();
  const lines = String(text || "").replace(/\r\n/g, "\n").split("\n");
  let i = 0;
  while (i < lines.length) {
    const line = lines[i];
    if (/^```/.test(line)) {
      const code = [];
      for (i++; i < lines.length && !/^```/.test(lines[i]); i++) code.push(lines[i]);
      out.append(UI.el("pre", {}, code.join("\n")));
      i++;
    } else if (/^\s*\|/.test(line)) {
      const block = [];
      for (; i < lines.length && /^\s*\|/.test(lines[i]); i++) block.push(lines[i].trim());
      out.append(UI.markdownTable(block));
    } else if (/^#{1,6}\s/.test(line)) {
      const level = Math.min(6, line.match(/^#+/)[0].length + 2);
      out.append(UI.el("h" + level, {}, UI.unescapeCell(line.replace(/^#+\s*/, ""))));
      i++;
    } else if (line.trim()) {
      const para = [];
      for (; i < lines.length && lines[i].trim() && !/^(\s*\||#{1,6}\s|```)/.test(lines[i]); i++) para.push(lines[i]);
      out.append(UI.el("p", {}, UI.cellNodes(para.join(" "))));
    } else {
      i++;
    }
  }
  return out;
};

"use strict";
/* Line charts as inline SVG: one or more series of [x, y] points on shared axes, with round tick
   values, a legend, and each point's value in its tooltip. No library: the page works offline. */

const SVG_NS = "http://www.w3.org/2000/svg";
const CHART = { width: 420, height: 220, left: 48, right: 22, top: 10, bottom: 36 };
UI.PALETTE = ["#2f6fec", "#e5484d", "#12a150", "#b7791f", "#8e4ec6", "#0894b3", "#d6409f", "#6b7385"];

function svg(tag, attrs, ...children) {
  const node = document.createElementNS(SVG_NS, tag);
  for (const [name, value] of Object.entries(attrs || {})) node.setAttribute(name, value);
  for (const child of children) node.append(child instanceof Node ? child : String(child));
  return node;
}

/** About `count` round tick values covering [min, max] (steps of 1, 2 or 5 times a power of ten). */
UI.niceTicks = function (min, max, count) {
  if (min === max) { min -= Math.abs(min) * 0.1 || 1; max += Math.abs(max) * 0.1 || 1; }
  const raw = (max - min) / Math.max(1, count);
  const power = Math.pow(10, Math.floor(Math.log10(raw)));
  const step = [1, 2, 5, 10].map((m) => m * power).find((s) => s >= raw);
  const ticks = [];
  for (let t = Math.floor(min / step) * step; t <= max + step * 1e-9; t += step) ticks.push(Number(t.toPrecision(12)));
  if (ticks[ticks.length - 1] < max) ticks.push(Number((ticks[ticks.length - 1] + step).toPrecision(12)));
  return ticks;
};

function tickText(value) {
  if (value === 0) return "0";
  const abs = Math.abs(value);
  if (abs >= 10000) return (value / 1000).toFixed(0) + "k";
  if (abs >= 100) return value.toFixed(0);
  return String(Number(value.toPrecision(3)));
}

function axes(xTicks, yTicks, sx, sy, opts) {
  const g = svg("g", { class: "axes" });
  const { left, right, top, bottom, width, height } = CHART;
  for (const y of yTicks) {
    g.append(svg("line", { class: "grid", x1: left, x2: width - right, y1: sy(y), y2: sy(y) }));
    g.append(svg("text", { class: "tick", x: left - 6, y: sy(y) + 4, "text-anchor": "end" }, tickText(y)));
  }
  for (const x of xTicks) {
    g.append(svg("text", { class: "tick", x: sx(x), y: height - bottom + 15, "text-anchor": "middle" }, tickText(x)));
  }
  g.append(svg("line", { class: "axis", x1: left, x2: width - right, y1: height - bottom, y2: height - bottom }));
  g.append(svg("line", { class: "axis", x1: left, x2: left, y1: top, y2: height - bottom }));
  g.append(svg("text", { class: "label", x: (left + width - right) / 2, y: height - 4, "text-anchor": "middle" },
    opts.xLabel || ""));
  g.append(svg("text", { class: "label", x: 12, y: (top + height - bottom) / 2, "text-anchor": "middle",
    transform: "rotate(-90 12 " + (top + height - bottom) / 2 + ")" }, opts.yLabel || ""));
  return g;
}

function seriesGroup(one, color, sx, sy, opts) {
  const g = svg("g", { class: "series-group" });
  const points = one.points.map(([x, y]) => sx(x).toFixed(1) + "," + sy(y).toFixed(1)).join(" ");
  g.append(svg("polyline", { class: "series", points, stroke: color, "data-series": one.name,
    "data-points": one.points.length }));
  if (one.points.length <= 80) {
    for (const [x, y] of one.points) {
      g.append(svg("circle", { cx: sx(x), cy: sy(y), r: 2.6, fill: color },
        svg("title", {}, one.name + ": " + (opts.xLabel || "x") + " " + tickText(x) + ", " + UI.fmtNumber(y, 4))));
    }
  }
  return g;
}

/** A <figure class="chart" id=id>: `series` = [{name, points: [[x, y], ...]}]; opts = {xLabel, yLabel, empty}. */
UI.chart = function (id, title, series, opts) {
  const o = opts || {};
  const drawn = series.map((s) => ({ name: s.name, points: (s.points || []).filter((p) => Number.isFinite(p[1])) }));
  const all = drawn.flatMap((s) => s.points);
  const root = svg("svg", { viewBox: "0 0 " + CHART.width + " " + CHART.height, role: "img",
    "aria-label": title, "data-points": all.length });
  if (!all.length) {
    root.append(svg("text", { class: "empty", x: CHART.width / 2, y: CHART.height / 2, "text-anchor": "middle" },
      o.empty || "no points yet"));
  } else {
    const xs = all.map((p) => p[0]), ys = all.map((p) => p[1]);
    const xTicks = UI.niceTicks(Math.min(...xs), Math.max(...xs), 6);
    const yTicks = UI.niceTicks(Math.min(...ys), Math.max(...ys), 4);
    const [x0, x1, y0, y1] = [xTicks[0], xTicks[xTicks.length - 1], yTicks[0], yTicks[yTicks.length - 1]];
    const sx = (x) => CHART.left + (x - x0) / (x1 - x0) * (CHART.width - CHART.left - CHART.right);
    const sy = (y) => CHART.height - CHART.bottom - (y - y0) / (y1 - y0) * (CHART.height - CHART.top - CHART.bottom);
    root.append(axes(xTicks, yTicks, sx, sy, o));
    drawn.forEach((s, i) => s.points.length && root.append(seriesGroup(s, UI.PALETTE[i % UI.PALETTE.length], sx, sy, o)));
  }
  const legend = UI.el("div", { class: "legend" }, drawn.map((s, i) => UI.el("span", { class: "key" },
    UI.el("i", { style: "background:" + UI.PALETTE[i % UI.PALETTE.length] }), s.name + " (" + s.points.length + ")")));
  return UI.el("figure", { class: "chart", id }, UI.el("figcaption", {}, title), root, legend);
};

/** Draw a chart into `parent`, replacing the chart of the same id when it is already there. */
UI.putChart = function (parent, id, title, series, opts) {
  const figure = UI.chart(id, title, series, opts);
  const old = document.getElementById(id);
  if (old) old.replaceWith(figure);
  else parent.append(figure);
  return figure;
};

/* Shared by every page: the payload, colours, theme, hover text and the traces of a map.
 * Document text is untrusted: it reaches the DOM only through textContent, and Plotly's
 * hover labels (which understand a few tags) only after escaping. */
(function () {
  "use strict";

  const data = window.QWEN_SITE_DATA;
  if (!data || data.schema !== "qwen-assets/site-data" || data.version !== 2) {
    document.body.textContent =
      "The site data (data.js) is missing or of another version: build the site_data asset.";
    throw new Error("qwen-assets: no usable site data");
  }

  // Colour-blind-aware categorical palette (Tableau 20 order), cycled past twenty groups.
  const PALETTE = [
    "#4e79a7", "#f28e2b", "#e15759", "#76b7b2", "#59a14f", "#edc948", "#b07aa1", "#ff9da7",
    "#9c755f", "#bab0ac", "#1f77b4", "#aec7e8", "#ff7f0e", "#ffbb78", "#2ca02c", "#98df8a",
    "#d62728", "#ff9896", "#9467bd", "#c5b0d5",
  ];
  /* Characters per line of a hover label, from the narrowest map on the page. Plotly puts a
   * label beside its point, on whichever side has more room: for a point in the middle of a
   * map that is half the map, less the label's arrow and padding. A label no wider stays
   * whole in a grid of maps (the comparison's), beside the explorer's panel and on a phone. */
  const CHAR_PX = 7.2; // a generous average for Plotly's 13 px label font
  const ARROW_PX = 16; // the arrow, the padding and a margin
  function hoverWrapFor(width) {
    return Math.max(24, Math.min(70, Math.floor((width / 2 - ARROW_PX) / CHAR_PX)));
  }
  let hoverWrap = hoverWrapFor(window.innerWidth);

  const documents = data.documents;
  const count = documents.id.length;
  // Smaller points where there are many, so clusters stay readable.
  const MARKER_SIZE = count > 5000 ? 3 : count > 2000 ? 4 : 6;

  /* Full texts: inline, or loaded on demand from texts/NNNN.js (a script tag, which works
   * from disk where fetch() does not). */
  window.QWEN_SITE_TEXTS = window.QWEN_SITE_TEXTS || [];
  const chunkLoads = new Map();
  function loadChunk(number) {
    if (!chunkLoads.has(number)) {
      chunkLoads.set(
        number,
        new Promise((resolve, reject) => {
          const script = document.createElement("script");
          script.src = "texts/" + String(number).padStart(4, "0") + ".js";
          script.onload = () => resolve(window.QWEN_SITE_TEXTS[number]);
          script.onerror = () => reject(new Error("cannot load " + script.src));
          document.head.append(script);
        })
      );
    }
    return chunkLoads.get(number);
  }
  function textOf(index) {
    return detailsReady().then(() => {
      if (documents.text) return documents.text[index];
      const size = data.texts.chunk_size;
      return loadChunk(Math.floor(index / size)).then((chunk) => chunk[index % size]);
    });
  }
  function allTexts() {
    return detailsReady().then(() => {
      if (documents.text) return documents.text;
      const loads = [];
      for (let number = 0; number < data.texts.chunks; number++) loads.push(loadChunk(number));
      return Promise.all(loads).then((chunks) => chunks.flat());
    });
  }
  /* details.js, loaded after the first draw, brings the rest of the payload: the neighbour
   * lists and the texts (or previews), most of its bytes. Whatever needs them waits for
   * this; the hover texts, category only until then, are completed in place. */
  let detailsLoad = null;
  function detailsReady() {
    if (!detailsLoad) {
      detailsLoad = new Promise((resolve, reject) => {
        const script = document.createElement("script");
        script.src = "details.js";
        script.onload = () => {
          const details = window.QWEN_SITE_DETAILS || { tasks: {}, documents: {} };
          for (const task of data.tasks) Object.assign(task, details.tasks[mapKey(task)]);
          Object.assign(documents, details.documents);
          // Inline texts: previews are their first characters (as the pipeline cuts them).
          if (!documents.preview) {
            documents.preview = documents.text.map((text) =>
              text.length <= data.preview_chars
                ? text
                : text.slice(0, data.preview_chars).replace(/\s+$/, "") + "…"
            );
          }
          documents.preview.forEach((preview, index) => {
            hoverText[index] += "<br>" + wrap(preview, hoverWrap).map(escapeMarkup).join("<br>");
          });
          resolve();
        };
        script.onerror = () => reject(new Error("cannot load " + script.src));
        document.head.append(script);
      });
    }
    return detailsLoad;
  }
  /* A map is a task as one variant embeds it; without [variants] there is one variant. */
  function mapKey(task) {
    return task.variant + "/" + task.name;
  }
  const maps = new Map(data.tasks.map((task) => [mapKey(task), task]));
  function mapOf(variant, name) {
    return maps.get(mapKey({ variant, name }));
  }
  const variantNames = data.variants.map((variant) => variant.name);
  const taskNames = [...new Set(data.tasks.map((task) => task.name))];
  const gridded = variantNames.length > 1;
  /* How a map is named on the page: its task, with its variant when there are several. */
  function mapTitle(task) {
    return gridded ? task.variant + " · " + task.name : task.name;
  }
  /* How a map is named in a file name (a saved image, an export). */
  function mapFileName(task) {
    return gridded ? task.variant + "-" + task.name : task.name;
  }
  /* The maps of the reference variant, by task name. */
  const tasksByName = new Map(
    data.tasks.filter((task) => task.variant === data.reference_variant).map((task) => [task.name, task])
  );
  const docIndex = new Map(documents.id.map((id, index) => [id, index]));
  const byCategory = data.categories.map(() => []);
  documents.category.forEach((category, index) => byCategory[category].push(index));

  /* Text for Plotly's labels, which read a little HTML: with < and > escaped no tag can
   * form, so quotes stay as they are (Plotly does not decode &quot; and would show it). */
  function escapeMarkup(text) {
    return String(text).replace(/&/g, "&amp;").replace(/</g, "&lt;").replace(/>/g, "&gt;");
  }

  function wrap(text, width) {
    const words = String(text).replace(/\s+/g, " ").trim().split(" ");
    const lines = [];
    let line = "";
    for (const word of words) {
      if (line && line.length + word.length + 1 > width) {
        lines.push(line);
        line = word;
      } else {
        line = line ? line + " " + word : word;
      }
    }
    if (line) lines.push(line);
    return lines;
  }

  // Escaped line by line, then joined with the one tag we add ourselves; the preview is
  // added when details.js has come.
  const hoverText = documents.category.map(
    (category) => "<b>" + escapeMarkup(data.categories[category]) + "</b>"
  );

  // Colours go to the legend's groups: every category while there are at most LEGEND_LIMIT,
  // else the largest (LEGEND_LIMIT - 1) and one grey group for the rest, so the legend stays
  // readable and no two listed categories share a colour. The posts of a corpus without
  // labels that are in no cluster are grey too.
  const LEGEND_LIMIT = 20;
  const OTHER_COLOUR = "#b8b8b8";
  const unclustered = data.categories_from ? data.categories.indexOf(data.unclustered) : -1;
  const bySize = byCategory
    .map((members, category) => category)
    .filter((category) => category !== unclustered)
    .sort((a, b) => byCategory[b].length - byCategory[a].length || a - b);
  const listed = new Set(
    bySize.length > LEGEND_LIMIT ? bySize.slice(0, LEGEND_LIMIT - 1) : bySize
  );
  const slot = new Map(
    [...listed].sort((a, b) => a - b).map((category, place) => [category, place])
  );
  // Beside a grey group, the palette's own grey would read as part of it.
  const palette =
    listed.size < data.categories.length ? PALETTE.filter((colour) => colour !== "#bab0ac") : PALETTE;

  function colourOf(category) {
    return slot.has(category) ? palette[slot.get(category) % palette.length] : OTHER_COLOUR;
  }

  /* The legend: [{name, members, colour}], listed categories in their order, then the rest. */
  const legendGroups = [...slot.keys()].map((category) => ({
    name: data.categories[category],
    members: byCategory[category],
    colour: colourOf(category),
  }));
  const rest = byCategory
    .map((members, category) => category)
    .filter((category) => !listed.has(category));
  if (rest.length) {
    const grouped = rest.length - (unclustered >= 0 ? 1 : 0);
    const noun = data.categories_from ? " clusters" : " labels";
    legendGroups.push({
      name:
        grouped === 0
          ? data.unclustered
          : "other " + grouped + noun + (unclustered >= 0 ? " and " + data.unclustered : ""),
      members: rest.flatMap((category) => byCategory[category]).sort((a, b) => a - b),
      colour: OTHER_COLOUR,
    });
  }

  function prefersDark() {
    return window.matchMedia && window.matchMedia("(prefers-color-scheme: dark)").matches;
  }

  function narrow() {
    return Boolean(window.matchMedia && window.matchMedia("(max-width: 760px)").matches);
  }

  function baseLayout() {
    const dark = prefersDark();
    const fg = dark ? "#e8e8e8" : "#1d1d1f";
    return {
      paper_bgcolor: "rgba(0,0,0,0)",
      plot_bgcolor: "rgba(0,0,0,0)",
      font: { color: fg, family: "system-ui, -apple-system, Segoe UI, Roboto, sans-serif" },
      // Room above the map for Plotly's mode bar, which would cover the legend's first entry.
      margin: { l: 10, r: 10, t: narrow() ? 10 : 34, b: 10 },
      xaxis: { visible: false, scaleanchor: "y" },
      yaxis: { visible: false },
      hovermode: "closest",
      hoverlabel: { align: "left", bgcolor: dark ? "#23262b" : "#ffffff", font: { color: fg } },
      // On a phone the legend goes below the map, which keeps the whole width.
      legend: narrow()
        ? { itemsizing: "constant", bgcolor: "rgba(0,0,0,0)", orientation: "h", x: 0, y: 0, yanchor: "top" }
        : { itemsizing: "constant", bgcolor: "rgba(0,0,0,0)" },
      dragmode: "pan",
    };
  }

  /* A map's plot options; its camera button saves it under the map's name. */
  function plotConfig(task) {
    return {
      responsive: true,
      displaylogo: false,
      scrollZoom: true,
      toImageButtonOptions: { format: "png", filename: "qwen-embedding-" + mapFileName(task), scale: 2 },
    };
  }

  // Traces whose points are documents (customdata: the document's index) carry this meta;
  // the labels and the rings drawn over them do not.
  const DOCUMENTS = "documents";
  const DIMMED = 0.08;
  const SHOWN = 0.85;

  /* The cluster labels of a task's map, as a text trace (customdata: the cluster numbers).
   * Not hoverable by Plotly, so they never steal a post's hover; `onLabelHover` watches
   * them. Label words come from post texts: escaped like them. */
  function labelTrace(task, visible) {
    // The biggest cluster first: where labels overlap, the first drawn stays (keepLabelsApart).
    const labels = [...((task.clusters && task.clusters.labels) || [])].sort(
      (a, b) => b.size - a.size || a.number - b.number
    );
    // A label near the map's left or right edge runs inwards, so it stays inside the panel.
    const low = Math.min(...task.x);
    const span = Math.max(...task.x) - low || 1;
    const side = (x) =>
      (x - low) / span < 0.3 ? "middle right" : (x - low) / span > 0.7 ? "middle left" : "middle center";
    return {
      type: "scatter",
      mode: "text",
      name: "labels",
      ids: labels.map((label) => "label:" + label.number),
      x: labels.map((label) => label.x),
      y: labels.map((label) => label.y),
      text: labels.map((label) => escapeMarkup(label.label)),
      customdata: labels.map((label) => label.number),
      hoverinfo: "skip",
      textposition: labels.map((label) => side(label.x)),
      cliponaxis: false,
      textfont: {
        size: count > 5000 ? 12 : 13,
        weight: 600,
        color: prefersDark() ? "#f4f4f4" : "#111111",
        shadow: "auto",
      },
      visible: visible !== false,
      showlegend: false,
    };
  }

  /* The cluster whose label is under the pointer, if any. The labels are the plot's only
   * text points, drawn in the trace's order. */
  function labelAt(plot, x, y) {
    const trace = (plot.data || []).find((candidate) => candidate.name === "labels");
    if (!trace || trace.visible === false) return null;
    const texts = plot.querySelectorAll(".textpoint text");
    for (let position = 0; position < texts.length; position++) {
      if (texts[position].style.visibility === "hidden") continue; // set aside by keepLabelsApart
      const box = texts[position].getBoundingClientRect();
      if (x >= box.left && x <= box.right && y >= box.top && y <= box.bottom) {
        return trace.customdata[position];
      }
    }
    return null;
  }

  /* After every draw (zoom and pan included), a label that would overlap a bigger cluster's
   * is hidden: the labels are drawn biggest first, and each is kept only where it is clear
   * of those kept before it. Zooming in makes room, and hidden labels come back. */
  function keepLabelsApart(plot) {
    const GAP = 2; // pixels between two labels' boxes
    const apart = () => {
      const kept = [];
      for (const text of plot.querySelectorAll(".textpoint text")) {
        text.style.visibility = "";
        const box = text.getBoundingClientRect();
        const clear = kept.every(
          (other) =>
            box.right + GAP <= other.left || other.right + GAP <= box.left ||
            box.bottom + GAP <= other.top || other.bottom + GAP <= box.top
        );
        if (clear) kept.push(box);
        else text.style.visibility = "hidden";
      }
    };
    plot.on("plotly_afterplot", apart);
    apart(); // the draw already made
  }

  /* Each table that scrolls sideways says so, while it is wider than its box. */
  function hintScrolling() {
    const check = () => {
      for (const box of document.querySelectorAll(".scrolls")) {
        const hint = box.querySelector(".scroll-hint");
        if (hint) hint.hidden = box.scrollWidth <= box.clientWidth + 1;
      }
    };
    window.addEventListener("resize", check);
    check();
  }

  /* The post of `task` drawn under page point (x, y), within a marker's size; null if none.
   * From the axes' ranges Plotly writes back into the layout, and the plot area's box. */
  function postAt(plot, task, x, y) {
    const area = plot.querySelector(".nsewdrag");
    const xRange = plot.layout.xaxis && plot.layout.xaxis.range;
    const yRange = plot.layout.yaxis && plot.layout.yaxis.range;
    if (!area || !xRange || !yRange) return null;
    const box = area.getBoundingClientRect();
    const toX = (value) => box.left + ((value - xRange[0]) / (xRange[1] - xRange[0])) * box.width;
    const toY = (value) => box.bottom - ((value - yRange[0]) / (yRange[1] - yRange[0])) * box.height;
    let best = null;
    let nearest = MARKER_SIZE;
    for (let doc = 0; doc < task.x.length; doc++) {
      const away = Math.hypot(toX(task.x[doc]) - x, toY(task.y[doc]) - y);
      if (away <= nearest) {
        nearest = away;
        best = doc;
      }
    }
    return best;
  }

  /* Calls `changed(cluster number or null)` when the pointer enters or leaves a label. */
  function onLabelHover(plot, changed) {
    let current = null;
    const check = (x, y) => {
      const found = x === null ? null : labelAt(plot, x, y);
      if (found === current) return;
      current = found;
      changed(found);
    };
    plot.addEventListener("mousemove", (event) => check(event.clientX, event.clientY));
    plot.addEventListener("mouseleave", () => check(null, null));
  }

  /* Per document, whether it is in cluster `number` of `task`'s map. */
  function clusterMembers(task, number) {
    const member = (task.clusters && task.clusters.member) || [];
    return documents.id.map((_, index) => member[index] === number);
  }

  /* Per document, full or dimmed: in every one of the given sets (boolean arrays or Sets of
   * indices), or null when there is nothing to dim. */
  function dimmedUnlessIn(...sets) {
    const active = sets.filter((set) => set);
    if (active.length === 0) return null;
    return documents.id.map((_, index) =>
      active.every((set) => (set instanceof Set ? set.has(index) : set[index])) ? 1 : DIMMED
    );
  }

  /* Apply per-document opacities (or the default) to every document trace of a drawn plot. */
  function restyleOpacity(plot, perDocument) {
    const indices = [];
    const values = [];
    plot.data.forEach((trace, position) => {
      if (trace.meta !== DOCUMENTS) return;
      indices.push(position);
      values.push(perDocument ? trace.customdata.map((index) => perDocument[index]) : SHOWN);
    });
    if (indices.length) return window.Plotly.restyle(plot, { "marker.opacity": values }, indices);
    return Promise.resolve();
  }

  /* Redraw a plot when its box changes size (a grid reflow, a side panel opening, a rotated
   * phone), but not for the size it is first drawn at: the observer reports that at once,
   * and a needless redraw of a large WebGL map costs half a second. Call it before the
   * first draw, which then happens at the size it records. */
  function followBox(plot) {
    followed.add(plot);
    fitHoverLabels();
    if (!window.ResizeObserver) return;
    let last = [plot.clientWidth, plot.clientHeight];
    new ResizeObserver(() => {
      const size = [plot.clientWidth, plot.clientHeight];
      if (size[0] === last[0] && size[1] === last[1]) return;
      last = size;
      fitHoverLabels();
      if (plot.data) window.Plotly.Plots.resize(plot);
    }).observe(plot);
  }
  const followed = new Set();

  /* Wrap the hover labels for the narrowest followed plot: the texts to come, and those of
   * the traces already drawn (a label's first line, its category, and its last lines in
   * italics, a page's own, stay as they are). */
  function fitHoverLabels() {
    const widths = [...followed].map((plot) => plot.clientWidth).filter((width) => width > 0);
    const fitting = widths.length ? hoverWrapFor(Math.min(...widths)) : hoverWrap;
    if (fitting === hoverWrap) return;
    hoverWrap = fitting;
    hoverText.forEach((text, index) => {
      hoverText[index] = rewrapHover(text, hoverWrap);
    });
    for (const plot of followed) {
      if (!plot.data) continue;
      const indices = [];
      const texts = [];
      plot.data.forEach((trace, position) => {
        if (trace.meta !== DOCUMENTS || !Array.isArray(trace.text)) return;
        indices.push(position);
        texts.push(trace.text.map((text) => rewrapHover(text, hoverWrap)));
      });
      if (indices.length) window.Plotly.restyle(plot, { text: texts }, indices);
    }
  }

  function rewrapHover(text, width) {
    const lines = text.split("<br>");
    const own = lines.slice(1).filter((line) => line.startsWith("<i>"));
    const preview = lines.slice(1).filter((line) => !line.startsWith("<i>")).join(" ");
    return [lines[0], ...(preview ? wrap(preview, width) : []), ...own].join("<br>");
  }

  /* The posts whose neighbourhood changed most against the reference task: fewest
   * neighbours kept (Jaccard), then furthest moved on the aligned maps. */
  function mostMoved(task, limit) {
    const change = neighbourhoodChange(task);
    const reference = mapOf(task.variant, data.reference_task);
    const shift = (index) =>
      Math.hypot(task.x[index] - reference.x[index], task.y[index] - reference.y[index]);
    const order = change.map((_, index) => index);
    order.sort((a, b) => change[a] - change[b] || shift(b) - shift(a) || a - b);
    return order.slice(0, limit);
  }

  function traceType() {
    return count > data.render.webgl_above ? "scattergl" : "scatter";
  }

  /* One trace per legend group, so Plotly's legend hides (click) and isolates (double-click).
   * `ids` let transitions move each document from its old place to its new one. */
  function categoryTraces(task, options) {
    const opacity = (options && options.opacity) || null;
    return legendGroups.map(({ name, members, colour }) => ({
      type: traceType(),
      mode: "markers",
      meta: DOCUMENTS,
      name: name,
      ids: members.map((index) => documents.id[index]),
      x: members.map((index) => task.x[index]),
      y: members.map((index) => task.y[index]),
      customdata: members,
      text: members.map((index) => hoverText[index]),
      hovertemplate: "%{text}<extra></extra>",
      marker: {
        color: colour,
        size: MARKER_SIZE,
        opacity: opacity ? members.map((index) => opacity[index]) : SHOWN,
      },
    }));
  }

  /* How many of a document's reference-task neighbours it keeps in this task. */
  function keptNeighbours(task, index) {
    const theirs = new Set(mapOf(task.variant, data.reference_task).neighbours[index]);
    return task.neighbours[index].filter((other) => theirs.has(other)).length;
  }

  /* Per document: the Jaccard index of its neighbours here and in the reference task. */
  const changeCache = new Map();
  function neighbourhoodChange(task) {
    if (!changeCache.has(mapKey(task))) {
      const reference = mapOf(task.variant, data.reference_task);
      const values = task.neighbours.map((mine, index) => {
        const shared = keptNeighbours(task, index);
        return shared / (mine.length + reference.neighbours[index].length - shared);
      });
      changeCache.set(mapKey(task), values);
    }
    return changeCache.get(mapKey(task));
  }

  function taskPageName(name) {
    return "task-" + name + ".html";
  }

  function fillTaskPageLinks(container, current) {
    if (!container) return;
    for (const name of taskNames) {
      const link = document.createElement("a");
      link.href = taskPageName(name);
      link.textContent = name;
      if (name === current) link.setAttribute("aria-current", "page");
      container.append(link);
    }
  }

  // At most `length` characters, cut after the last whole word when one ends in the last
  // third, and marked with an ellipsis when anything was cut.
  function shorten(text, length) {
    const trimmed = text.replace(/…$/, "");
    if (trimmed.length <= length && trimmed === text) return text;
    const cut = trimmed.slice(0, length);
    const space = cut.search(/\s\S*$/);
    return (space > (length * 2) / 3 ? cut.slice(0, space) : cut).replace(/\s+$/, "") + "…";
  }

  function formatFigure(value) {
    return typeof value === "number" ? value.toFixed(3) : "–";
  }

  window.QwenSite = {
    data, documents, count, tasksByName, mapOf, mapKey, mapTitle, mapFileName, variantNames, taskNames, gridded, docIndex, byCategory, legendGroups, colourOf, prefersDark,
    baseLayout, plotConfig, traceType, categoryTraces, neighbourhoodChange, keptNeighbours,
    hoverText, fillTaskPageLinks, taskPageName, formatFigure, shorten, textOf, allTexts, escapeMarkup, detailsReady, DOCUMENTS,
    DIMMED, SHOWN, MARKER_SIZE, labelTrace, onLabelHover, postAt, keepLabelsApart, hintScrolling, clusterMembers, dimmedUnlessIn, restyleOpacity, mostMoved, followBox,
  };
})();

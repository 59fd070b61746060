/* Shared by every page: the payload, colours, theme, hover text and the traces of a map.
 * Document text is untrusted: it reaches the DOM only through textContent, and Plotly's
 * hover labels (which understand a few tags) only after escaping. */
(function () {
  "use strict";

  const data = window.QWEN_SITE_DATA;
  if (!data || data.schema !== "qwen-assets/site-data" || data.version !== 1) {
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
  const HOVER_WRAP = 70;

  const documents = data.documents;
  const count = documents.id.length;
  // Inline texts: previews are their first characters (as the pipeline cuts them).
  if (!documents.preview) {
    documents.preview = documents.text.map((text) =>
      text.length <= data.preview_chars
        ? text
        : text.slice(0, data.preview_chars).replace(/\s+$/, "") + "…"
    );
  }

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
    if (documents.text) return Promise.resolve(documents.text[index]);
    const size = data.texts.chunk_size;
    return loadChunk(Math.floor(index / size)).then((chunk) => chunk[index % size]);
  }
  function allTexts() {
    if (documents.text) return Promise.resolve(documents.text);
    const loads = [];
    for (let number = 0; number < data.texts.chunks; number++) loads.push(loadChunk(number));
    return Promise.all(loads).then((chunks) => chunks.flat());
  }
  const tasksByName = new Map(data.tasks.map((task) => [task.name, task]));
  const docIndex = new Map(documents.id.map((id, index) => [id, index]));
  const byCategory = data.categories.map(() => []);
  documents.category.forEach((category, index) => byCategory[category].push(index));

  function escapeMarkup(text) {
    return String(text)
      .replace(/&/g, "&amp;")
      .replace(/</g, "&lt;")
      .replace(/>/g, "&gt;")
      .replace(/"/g, "&quot;");
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

  // Escaped line by line, then joined with the one tag we add ourselves.
  const hoverText = documents.preview.map(
    (preview, index) =>
      "<b>" + escapeMarkup(data.categories[documents.category[index]]) + "</b><br>" +
      wrap(preview, HOVER_WRAP).map(escapeMarkup).join("<br>")
  );

  function colourOf(category) {
    return PALETTE[category % PALETTE.length];
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
      margin: { l: 10, r: 10, t: 10, b: 10 },
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

  function plotConfig(filename) {
    return {
      responsive: true,
      displaylogo: false,
      scrollZoom: true,
      modeBarButtonsToRemove: ["select2d", "lasso2d"],
      toImageButtonOptions: { format: "png", filename: filename, scale: 2 },
    };
  }

  function traceType() {
    return count > data.render.webgl_above ? "scattergl" : "scatter";
  }

  /* One trace per category, so Plotly's legend hides (click) and isolates (double-click).
   * `ids` let transitions move each document from its old place to its new one. */
  function categoryTraces(task, options) {
    const opacity = (options && options.opacity) || null;
    const size = count > 5000 ? 3 : count > 2000 ? 4 : 6;
    return byCategory.map((members, category) => ({
      type: traceType(),
      mode: "markers",
      name: data.categories[category],
      ids: members.map((index) => documents.id[index]),
      x: members.map((index) => task.x[index]),
      y: members.map((index) => task.y[index]),
      customdata: members,
      text: members.map((index) => hoverText[index]),
      hovertemplate: "%{text}<extra></extra>",
      marker: {
        color: colourOf(category),
        size: size,
        opacity: opacity ? members.map((index) => opacity[index]) : 0.8,
      },
    }));
  }

  /* How many of a document's reference-task neighbours it keeps in this task. */
  function keptNeighbours(task, index) {
    const theirs = new Set(tasksByName.get(data.reference_task).neighbours[index]);
    return task.neighbours[index].filter((other) => theirs.has(other)).length;
  }

  /* Per document: the Jaccard index of its neighbours here and in the reference task. */
  const changeCache = new Map();
  function neighbourhoodChange(task) {
    if (!changeCache.has(task.name)) {
      const reference = tasksByName.get(data.reference_task);
      const values = task.neighbours.map((mine, index) => {
        const shared = keptNeighbours(task, index);
        return shared / (mine.length + reference.neighbours[index].length - shared);
      });
      changeCache.set(task.name, values);
    }
    return changeCache.get(task.name);
  }

  function taskPageName(name) {
    return "task-" + name + ".html";
  }

  function fillTaskPageLinks(container, current) {
    if (!container) return;
    for (const task of data.tasks) {
      const link = document.createElement("a");
      link.href = taskPageName(task.name);
      link.textContent = task.name;
      if (task.name === current) link.setAttribute("aria-current", "page");
      container.append(link);
    }
  }

  function formatFigure(value) {
    return typeof value === "number" ? value.toFixed(3) : "–";
  }

  window.QwenSite = {
    data, documents, count, tasksByName, docIndex, byCategory, colourOf, prefersDark,
    baseLayout, plotConfig, traceType, categoryTraces, neighbourhoodChange, keptNeighbours,
    hoverText, fillTaskPageLinks, formatFigure, textOf, allTexts,
  };
})();

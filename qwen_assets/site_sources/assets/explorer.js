/* The explorer: switch tasks (animated), colour modes, search, a document panel, and a view
 * kept in the URL hash. Every text is inserted with textContent. */
(function () {
  "use strict";

  const site = window.QwenSite;
  const { data, documents, count, tasksByName, docIndex } = site;
  const plot = document.getElementById("plot");
  const TRANSITION_MS = 600;
  const SEARCH_DELAY_MS = 150;
  // Per-post scores the payload carries (sentiment, hostility, length), to colour by.
  const PROPERTIES = new Map(Object.entries(documents.properties || {}));
  const PROPERTY_SCALES = {
    // Plotly's RdBu runs blue to red; reversed, negative is red and positive blue.
    sentiment: { colorscale: "RdBu", reverse: true, cmin: -1, cmax: 1, title: "Sentiment<br>(VADER)" },
    hostility: { colorscale: "YlOrRd", cmin: 0, cmax: 1, title: "Hostility<br>(offensive, 0–1)" },
    length: { colorscale: "Viridis", title: "Length<br>(log10 characters)", log: true },
  };
  const DIMMED = 0.08;

  const state = { task: data.tasks[0].name, colour: "category", doc: null, query: "" };
  let lowered = null; // every text in lower case, once the texts are loaded
  let matches = null; // per document: does it contain the query?
  let drawnColour = null;

  function readHash() {
    const params = new URLSearchParams(window.location.hash.slice(1));
    const task = params.get("task");
    state.task = tasksByName.has(task) ? task : data.tasks[0].name;
    const colour = params.get("colour");
    state.colour = colour === "change" || PROPERTIES.has(colour) ? colour : "category";
    const doc = params.get("doc");
    state.doc = doc !== null && docIndex.has(doc) ? docIndex.get(doc) : null;
    state.query = params.get("q") || "";
  }

  function writeHash() {
    const params = new URLSearchParams();
    params.set("task", state.task);
    if (state.colour !== "category") params.set("colour", state.colour);
    if (state.doc !== null) params.set("doc", documents.id[state.doc]);
    if (state.query) params.set("q", state.query);
    const hash = "#" + params.toString();
    if (window.location.hash !== hash) window.history.replaceState(null, "", hash);
  }

  function opacities() {
    if (!matches) return null;
    return matches.map((hit) => (hit ? 1 : DIMMED));
  }

  function changeTrace(task) {
    const change = site.neighbourhoodChange(task);
    const opacity = opacities();
    return {
      type: site.traceType(),
      mode: "markers",
      name: "neighbourhood change",
      ids: documents.id,
      x: task.x,
      y: task.y,
      customdata: documents.id.map((_, index) => index),
      text: site.hoverText.map(
        (hover, index) => hover + "<br><i>kept " + change[index].toFixed(2) + " (Jaccard)</i>"
      ),
      hovertemplate: "%{text}<extra></extra>",
      showlegend: false,
      marker: {
        color: change,
        cmin: 0,
        cmax: 1,
        colorscale: "Viridis",
        reversescale: true,
        size: count > 5000 ? 3 : count > 2000 ? 4 : 6,
        opacity: opacity || 0.85,
        colorbar: {
          title: { text: "Neighbours kept<br>vs " + data.reference_task, side: "right" },
          thickness: 12,
        },
      },
    };
  }

  function propertyTrace(task, name) {
    const scale = PROPERTY_SCALES[name] || { colorscale: "Viridis", title: name };
    const raw = PROPERTIES.get(name);
    const values = scale.log ? raw.map((value) => Math.log10(Math.max(value, 1))) : raw;
    const opacity = opacities();
    return {
      type: site.traceType(),
      mode: "markers",
      name,
      ids: documents.id,
      x: task.x,
      y: task.y,
      customdata: documents.id.map((_, index) => index),
      text: site.hoverText.map((hover, index) => hover + "<br><i>" + name + " " + raw[index] + "</i>"),
      hovertemplate: "%{text}<extra></extra>",
      showlegend: false,
      marker: {
        color: values,
        cmin: scale.cmin,
        cmax: scale.cmax,
        colorscale: scale.colorscale,
        reversescale: Boolean(scale.reverse),
        size: count > 5000 ? 3 : count > 2000 ? 4 : 6,
        opacity: opacity || 0.85,
        colorbar: { title: { text: scale.title, side: "right" }, thickness: 12 },
      },
    };
  }

  function highlightTrace(task) {
    const picked = state.doc === null ? [] : [state.doc, ...task.neighbours[state.doc]];
    return {
      type: site.traceType(),
      mode: "markers",
      name: "selected",
      ids: picked.map((index) => "selected:" + index),
      x: picked.map((index) => task.x[index]),
      y: picked.map((index) => task.y[index]),
      customdata: picked,
      hoverinfo: "skip",
      showlegend: false,
      marker: {
        symbol: "circle-open",
        size: picked.map((_, position) => (position === 0 ? 18 : 11)),
        color: site.prefersDark() ? "#ffffff" : "#111111",
        line: { width: 2 },
      },
    };
  }

  function draw(animate) {
    const task = tasksByName.get(state.task);
    const traces =
      state.colour === "change"
        ? [changeTrace(task)]
        : PROPERTIES.has(state.colour)
          ? [propertyTrace(task, state.colour)]
          : site.categoryTraces(task, { opacity: opacities() });
    traces.push(highlightTrace(task));
    const layout = site.baseLayout();
    // Keeps zoom and legend choices across redraws of the same mode.
    layout.uirevision = state.colour;
    layout.showlegend = state.colour === "category";
    const config = site.plotConfig("qwen-embedding-" + state.task);
    const smooth =
      animate &&
      drawnColour === state.colour &&
      site.traceType() === "scatter" &&
      plot.data &&
      plot.data.length === traces.length;
    drawnColour = state.colour;
    if (!smooth) return window.Plotly.react(plot, traces, layout, config);
    // Move every point from its old place to its new one, then settle the rest (colours,
    // hover text) without a transition.
    const moves = traces.map((trace) => ({ x: trace.x, y: trace.y }));
    return window.Plotly.animate(
      plot,
      { data: moves, traces: traces.map((_, index) => index) },
      {
        transition: { duration: TRANSITION_MS, easing: "cubic-in-out" },
        frame: { duration: TRANSITION_MS, redraw: false },
        mode: "immediate",
      }
    ).then(() => window.Plotly.react(plot, traces, layout, config));
  }

  function showTaskText() {
    const task = tasksByName.get(state.task);
    document.getElementById("task-name").textContent = task.name + ":";
    document.getElementById("instruction").textContent = task.instruction
      ? "“" + task.instruction + "”"
      : "no instruction";
    document.getElementById("description").textContent = task.description;
    for (const button of document.querySelectorAll("#task-buttons button")) {
      button.setAttribute("aria-pressed", String(button.dataset.task === state.task));
    }
    for (const button of document.querySelectorAll("[data-colour]")) {
      button.setAttribute("aria-pressed", String(button.dataset.colour === state.colour));
    }
    for (const row of document.querySelectorAll("#quality-rows tr")) {
      row.classList.toggle("current", row.dataset.task === state.task);
    }
  }

  function showPanel() {
    const panel = document.getElementById("panel");
    if (state.doc === null) {
      panel.hidden = true;
      return;
    }
    const task = tasksByName.get(state.task);
    const index = state.doc;
    panel.hidden = false;
    document.getElementById("doc-category").textContent =
      data.categories[documents.category[index]];
    document.getElementById("doc-id").textContent = documents.id[index];
    const textBox = document.getElementById("doc-text");
    textBox.textContent = documents.preview[index];
    site.textOf(index).then((text) => {
      if (state.doc === index) textBox.textContent = text;
    });
    document.getElementById("neighbours-task").textContent = task.name;
    const k = task.neighbours[index].length;
    document.getElementById("doc-kept").textContent =
      task.name === data.reference_task
        ? k + " nearest neighbours in the reference task"
        : "Kept " + site.keptNeighbours(task, index) + " of its " + k + " " +
          data.reference_task + "-task neighbours";
    const list = document.getElementById("neighbours");
    list.replaceChildren();
    task.neighbours[index].forEach((other, rank) => {
      const item = document.createElement("li");
      const button = document.createElement("button");
      button.type = "button";
      button.dataset.doc = documents.id[other];
      const score = document.createElement("span");
      score.className = "score";
      score.textContent = task.similarity[index][rank].toFixed(3);
      const category = document.createElement("strong");
      category.textContent = data.categories[documents.category[other]];
      button.append(score, category, " · " + documents.preview[other].slice(0, 90));
      button.addEventListener("click", () => select(other));
      item.append(button);
      list.append(item);
    });
  }

  function runSearch() {
    const query = state.query.trim().toLowerCase();
    const output = document.getElementById("search-count");
    if (!query) {
      matches = null;
      output.textContent = "";
      return Promise.resolve();
    }
    if (!lowered) output.textContent = "loading texts…";
    return site.allTexts().then((texts) => {
      lowered = lowered || texts.map((text) => text.toLowerCase());
      if (query !== state.query.trim().toLowerCase()) return; // a newer search is running
      matches = lowered.map((text) => text.includes(query));
      const hits = matches.filter(Boolean).length;
      output.textContent = hits + " of " + count + " match";
    });
  }

  function update(options) {
    writeHash();
    showTaskText();
    showPanel();
    return draw(options && options.animate);
  }

  function switchTask(name) {
    if (!tasksByName.has(name) || name === state.task) return;
    state.task = name;
    update({ animate: true });
  }

  function select(index) {
    state.doc = index;
    update();
  }

  function buildControls() {
    const buttons = document.getElementById("task-buttons");
    data.tasks.forEach((task, position) => {
      const button = document.createElement("button");
      button.type = "button";
      button.dataset.task = task.name;
      button.textContent = task.name;
      button.title = (task.instruction || "no instruction") + " (key " + (position + 1) + ")";
      button.addEventListener("click", () => switchTask(task.name));
      buttons.append(button);
    });
    const colours = document.getElementById("colour-buttons");
    for (const name of PROPERTIES.keys()) {
      const button = document.createElement("button");
      button.type = "button";
      button.dataset.colour = name;
      button.textContent = name[0].toUpperCase() + name.slice(1);
      button.title = "Colour each post by its " + name;
      colours.append(button);
    }
    for (const button of document.querySelectorAll("[data-colour]")) {
      button.addEventListener("click", () => {
        state.colour = button.dataset.colour;
        update();
      });
    }
    const rows = document.getElementById("quality-rows");
    for (const task of data.tasks) {
      const row = document.createElement("tr");
      row.dataset.task = task.name;
      const figures = [
        task.quality.knn_accuracy,
        task.quality.silhouette,
        task.quality.trustworthiness,
        task.quality.overlap_with_reference,
      ];
      for (const value of [task.name, ...figures.map(site.formatFigure)]) {
        const cell = document.createElement("td");
        cell.textContent = value;
        row.append(cell);
      }
      rows.append(row);
    }
    const headlines = document.getElementById("headlines");
    for (const task of data.tasks.filter((task) => task.headline)) {
      const line = document.createElement("li");
      line.dataset.task = task.name;
      line.textContent = task.headline;
      headlines.append(line);
    }
    document.getElementById("headlines-block").hidden = headlines.children.length === 0;
    const search = document.getElementById("search");
    search.value = state.query;
    let timer = null;
    search.addEventListener("input", () => {
      window.clearTimeout(timer);
      timer = window.setTimeout(() => {
        state.query = search.value;
        runSearch().then(() => update());
      }, SEARCH_DELAY_MS);
    });
    document.getElementById("panel-close").addEventListener("click", () => select(null));
    const about = document.getElementById("about");
    document.getElementById("about-open").addEventListener("click", () => about.showModal());
    document.addEventListener("keydown", (event) => {
      const target = event.target;
      if (target instanceof HTMLInputElement || event.altKey || event.ctrlKey || event.metaKey) {
        return;
      }
      if (event.key === "Escape" && state.doc !== null) select(null);
      const position = Number(event.key);
      if (Number.isInteger(position) && position >= 1 && position <= data.tasks.length) {
        switchTask(data.tasks[position - 1].name);
      }
    });
    window.addEventListener("hashchange", () => {
      const previous = state.task;
      readHash();
      document.getElementById("search").value = state.query;
      runSearch().then(() => update({ animate: previous !== state.task }));
    });
    if (window.matchMedia) {
      window.matchMedia("(prefers-color-scheme: dark)").addEventListener("change", () => draw());
    }
    site.fillTaskPageLinks(document.getElementById("task-pages"), null);
  }

  readHash();
  buildControls();
  runSearch()
    .then(() => update())
    .then(() => {
      plot.on("plotly_click", (event) => {
        const point = event.points && event.points[0];
        if (point && typeof point.customdata === "number") select(point.customdata);
      });
      document.body.dataset.ready = "true";
    });
})();

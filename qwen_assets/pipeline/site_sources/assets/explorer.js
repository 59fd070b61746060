/* The explorer: switch tasks and variants (animated), colour modes, search, cluster labels,
 * box and lasso selection (followed across tasks, exported as CSV or JSON), a document panel,
 * the posts that moved most, and a view kept in the URL hash. Every text is inserted with
 * textContent. */
(function () {
  "use strict";

  const site = window.QwenSite;
  const { data, documents, count, tasksByName, docIndex } = site;
  const VARIANT_FIGURE = "the figure on what the task aims at (k-NN accuracy for a task without a target)";
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
  const SELECTION_IN_URL = 200; // larger selections are not kept in the link
  const SELECTION_LISTED = 200; // posts listed in the selection panel (an export has all)
  const MOVED_LISTED = 15;

  const state = {
    task: data.tasks[0].name,
    variant: data.reference_variant,
    colour: "category",
    doc: null,
    query: "",
    labels: true,
    selection: null, // document indices, in document order
  };
  let hoveredCluster = null;
  let draws = 0;
  let redrawing = false;
  let firstDrawn = false;
  let lowered = null; // every text in lower case, once the texts are loaded
  let matches = null; // per document: does it contain the query?
  let drawnColour = null;

  function readHash() {
    const params = new URLSearchParams(window.location.hash.slice(1));
    const task = params.get("task");
    state.task = tasksByName.has(task) ? task : data.tasks[0].name;
    const variant = params.get("variant");
    state.variant = site.variantNames.includes(variant) ? variant : data.reference_variant;
    const colour = params.get("colour");
    state.colour = colour === "change" || PROPERTIES.has(colour) ? colour : "category";
    const doc = params.get("doc");
    state.doc = doc !== null && docIndex.has(doc) ? docIndex.get(doc) : null;
    state.query = params.get("q") || "";
    state.labels = params.get("labels") !== "off";
    const picked = (params.get("sel") || "")
      .split(",")
      .filter((id) => docIndex.has(id))
      .map((id) => docIndex.get(id));
    state.selection = picked.length ? [...new Set(picked)].sort((a, b) => a - b) : null;
  }

  function writeHash() {
    const params = new URLSearchParams();
    params.set("task", state.task);
    if (site.gridded) params.set("variant", state.variant);
    if (state.colour !== "category") params.set("colour", state.colour);
    if (state.doc !== null) params.set("doc", documents.id[state.doc]);
    if (state.query) params.set("q", state.query);
    if (!state.labels) params.set("labels", "off");
    if (state.selection && state.selection.length <= SELECTION_IN_URL) {
      params.set("sel", state.selection.map((index) => documents.id[index]).join(","));
    }
    const hash = "#" + params.toString();
    if (window.location.hash !== hash) window.history.replaceState(null, "", hash);
  }

  /* The map shown: the task, as the chosen variant embeds it. */
  function current() {
    return site.mapOf(state.variant, state.task);
  }

  /* Per document: full or dimmed. A hovered label shows its cluster alone; otherwise the
   * search and the selection (both, when both are set) stay bright. */
  function opacities() {
    if (hoveredCluster !== null) {
      return site.dimmedUnlessIn(site.clusterMembers(current(), hoveredCluster));
    }
    return site.dimmedUnlessIn(matches, state.selection && new Set(state.selection));
  }

  function changeTrace(task) {
    const change = site.neighbourhoodChange(task);
    const opacity = opacities();
    return {
      type: site.traceType(),
      mode: "markers",
      meta: site.DOCUMENTS,
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
        size: site.MARKER_SIZE,
        opacity: opacity || site.SHOWN,
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
      meta: site.DOCUMENTS,
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
        size: site.MARKER_SIZE,
        opacity: opacity || site.SHOWN,
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
    const task = current();
    const traces =
      state.colour === "change"
        ? [changeTrace(task)]
        : PROPERTIES.has(state.colour)
          ? [propertyTrace(task, state.colour)]
          : site.categoryTraces(task, { opacity: opacities() });
    traces.push(site.labelTrace(task, state.labels), highlightTrace(task));
    const layout = site.baseLayout();
    // The tool the reader picked (pan, box, lasso) stays picked; a drawn selection's outline
    // goes: the selection itself shows as the bright posts.
    layout.dragmode = (plot.layout && plot.layout.dragmode) || layout.dragmode;
    layout.selections = [];
    layout.selectionrevision = ++draws; // a new value: Plotly forgets its own selection state
    // Keeps zoom and legend choices across redraws of the same mode.
    layout.uirevision = state.colour;
    layout.showlegend = state.colour === "category";
    const config = site.plotConfig(task);
    const smooth =
      animate &&
      drawnColour === state.colour &&
      site.traceType() === "scatter" &&
      plot.data &&
      plot.data.length === traces.length;
    drawnColour = state.colour;
    // A redraw drops Plotly's own selection, which it reports as a (de)selection: not the
    // reader's, so the handlers ignore what comes while it runs.
    redrawing = true;
    const mine = draws;
    const settled = () => {
      redrawing = false;
      // The newest draw has come to rest (moves, colours, hover text): what a script driving
      // the page, the tests included, waits on instead of a guess at the animation's length.
      if (mine === draws) plot.dataset.settled = String(mine);
    };
    if (!smooth) return window.Plotly.react(plot, traces, layout, config).finally(settled);
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
    )
      .then(() => window.Plotly.react(plot, traces, layout, config))
      .finally(settled);
  }

  function showTaskText() {
    const task = current();
    document.getElementById("task-name").textContent = site.mapTitle(task) + ":";
    const variant = data.variants.find((candidate) => candidate.name === state.variant);
    const variantText = document.getElementById("variant-text");
    variantText.hidden = !site.gridded;
    variantText.textContent = site.gridded
      ? "Variant " + variant.name + ": " + variant.model +
        (variant.dimensions ? " at " + variant.dimensions + " dimensions" : "") +
        ", prompt “" + variant.prompt_template.replace(/\n/g, "⏎") + "”" +
        (variant.description ? ". " + variant.description : "")
      : "";
    for (const button of document.querySelectorAll("#variant-buttons button")) {
      button.setAttribute("aria-pressed", String(button.dataset.variant === state.variant));
    }
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
    document.getElementById("labels-toggle").setAttribute("aria-pressed", String(state.labels));
    const dragmode = (plot.layout && plot.layout.dragmode) || "pan";
    for (const button of document.querySelectorAll("[data-drag]")) {
      button.setAttribute("aria-pressed", String(button.dataset.drag === dragmode));
    }
    for (const row of document.querySelectorAll("#quality-rows tr")) {
      row.hidden = row.dataset.variant !== state.variant;
      row.classList.toggle("current", row.dataset.task === state.task);
    }
    for (const line of document.querySelectorAll("#headlines li")) {
      line.hidden = line.dataset.variant !== state.variant;
    }
    for (const cell of document.querySelectorAll("#variant-rows td")) {
      cell.classList.toggle(
        "current",
        cell.dataset.variant === state.variant && cell.dataset.task === state.task
      );
    }
  }

  function showPanel() {
    const panel = document.getElementById("panel");
    if (state.doc === null) {
      panel.hidden = true;
      return;
    }
    const task = current();
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
    showExtra(index);
    document.getElementById("neighbours-task").textContent = site.mapTitle(task);
    // A post new to the corpus since the map was laid out: placed onto it, the others kept.
    const placed = document.getElementById("doc-placed");
    const when = (task.placed || {})[index];
    placed.hidden = !when;
    placed.textContent = when
      ? "Placed onto this map on " + when + ", after its layout was made (the posts it had kept their places)"
      : "";
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
      item.append(postButton(other, task.similarity[index][rank].toFixed(3)));
      list.append(item);
    });
  }

  // The corpus's own columns beside the text (corpus.extra_columns), shown as text, never as markup.
  function showExtra(index) {
    const list = document.getElementById("doc-extra");
    list.replaceChildren();
    for (const [name, values] of Object.entries(documents.extra || {})) {
      const value = values[index];
      if (value === null || value === undefined || value === "") continue;
      const term = document.createElement("dt");
      term.textContent = name;
      const detail = document.createElement("dd");
      detail.textContent = value;
      list.append(term, detail);
    }
    list.hidden = list.childElementCount === 0;
  }

  function postButton(index, score) {
    const button = document.createElement("button");
    button.type = "button";
    button.dataset.doc = documents.id[index];
    if (score !== undefined) {
      const figure = document.createElement("span");
      figure.className = "score";
      figure.textContent = score;
      button.append(figure);
    }
    const category = document.createElement("strong");
    category.textContent = data.categories[documents.category[index]];
    button.append(category, " · " + site.shorten(documents.preview[index], 90));
    button.addEventListener("click", () => select(index));
    return button;
  }

  function showSelection() {
    const panel = document.getElementById("selection");
    const picked = state.selection;
    panel.hidden = !picked;
    if (!picked) return;
    document.getElementById("selection-count").textContent =
      picked.length + (picked.length === 1 ? " post selected" : " posts selected");
    document.getElementById("selection-note").textContent =
      picked.length > SELECTION_IN_URL
        ? "(too many to keep in the link: export them)"
        : "(kept in the link)";
    const perGroup = new Map();
    for (const index of picked) {
      const category = documents.category[index];
      perGroup.set(category, (perGroup.get(category) || 0) + 1);
    }
    const groups = document.getElementById("selection-groups");
    groups.replaceChildren();
    [...perGroup.entries()]
      .sort((a, b) => b[1] - a[1] || a[0] - b[0])
      .forEach(([category, number]) => {
        const item = document.createElement("li");
        item.dataset.category = data.categories[category];
        const swatch = document.createElement("span");
        swatch.className = "swatch";
        swatch.style.background = site.colourOf(category);
        const share = Math.round((100 * number) / picked.length);
        item.append(swatch, data.categories[category] + " ", numberTag(number, share));
        groups.append(item);
      });
    const posts = document.getElementById("selection-posts");
    posts.replaceChildren();
    for (const index of picked.slice(0, SELECTION_LISTED)) {
      const item = document.createElement("li");
      item.append(postButton(index));
      posts.append(item);
    }
    document.getElementById("selection-more").textContent =
      picked.length > SELECTION_LISTED
        ? "and " + (picked.length - SELECTION_LISTED) + " more: the export has them all"
        : "";
  }

  function numberTag(number, share) {
    const tag = document.createElement("span");
    tag.className = "score";
    tag.textContent = number + " (" + share + "%)";
    return tag;
  }

  function showMoved() {
    const task = current();
    const list = document.getElementById("moved");
    list.replaceChildren();
    const isReference = task.name === data.reference_task;
    document.getElementById("moved-title").textContent = isReference
      ? "What moved most"
      : "What moved most in " + site.mapTitle(task) + ", against " + data.reference_task;
    document.getElementById("moved-note").textContent = isReference
      ? "Pick another task: its posts whose nearest neighbours changed most against this " +
        "reference task are listed here."
      : "Posts that kept the fewest of their " + data.reference_task + "-task neighbours " +
        "(Jaccard overlap of the neighbour lists), then those that moved furthest on the map.";
    if (isReference) return;
    const change = site.neighbourhoodChange(task);
    for (const index of site.mostMoved(task, MOVED_LISTED)) {
      const item = document.createElement("li");
      item.append(postButton(index, "kept " + change[index].toFixed(2)));
      list.append(item);
    }
  }

  function csvCell(value) {
    if (typeof value === "number") return String(value);
    let text = String(value);
    // A spreadsheet must not run a post as a formula.
    if (/^[=+\-@\t\r]/.test(text)) text = "'" + text;
    return /[",\n\r]/.test(text) ? '"' + text.replace(/"/g, '""') + '"' : text;
  }

  function download(name, body, type) {
    const url = URL.createObjectURL(new Blob([body], { type: type + ";charset=utf-8" }));
    const link = document.createElement("a");
    link.href = url;
    link.download = name;
    document.body.append(link);
    link.click();
    link.remove();
    window.setTimeout(() => URL.revokeObjectURL(url), 1000);
  }

  /* The selection with its texts and its place on the current task's map. */
  function exportSelection(format) {
    const task = current();
    const picked = state.selection || [];
    return Promise.all(picked.map((index) => site.textOf(index))).then((texts) => {
      const rows = picked.map((index, position) => ({
        doc_id: documents.id[index],
        newsgroup: data.categories[documents.category[index]],
        variant: task.variant,
        task: task.name,
        x: task.x[index],
        y: task.y[index],
        text: texts[position],
      }));
      const name = "qwen-selection-" + site.mapFileName(task) + "." + format;
      if (format === "json") {
        download(name, JSON.stringify(rows, null, 2), "application/json");
        return;
      }
      const columns = Object.keys(rows[0] || { doc_id: "" });
      const lines = [columns.join(",")].concat(
        rows.map((row) => columns.map((column) => csvCell(row[column])).join(","))
      );
      download(name, lines.join("\r\n") + "\r\n", "text/csv");
    });
  }

  function setSelection(indices) {
    state.selection = indices && indices.length ? indices : null;
    update();
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

  /* The map is drawn at once; what needs details.js (an open post's rings and panel, the
   * change colouring, the lists of posts) waits for it. */
  function update(options) {
    writeHash();
    showTaskText();
    const animate = options && options.animate;
    const needed = state.doc !== null || state.colour === "change";
    if (!needed && !firstDrawn) return draw(animate); // details.js loads once the map is up
    const lists = site.detailsReady().then(showLists);
    return needed ? lists.then(() => draw(animate)) : draw(animate);
  }

  function showLists() {
    showPanel();
    showSelection();
    showMoved();
  }

  function switchTask(name) {
    if (!tasksByName.has(name) || name === state.task) return;
    state.task = name;
    update({ animate: true });
  }

  function switchVariant(name) {
    if (!site.variantNames.includes(name) || name === state.variant) return;
    state.variant = name;
    update({ animate: true });
  }

  function select(index) {
    state.doc = index;
    update();
  }

  function buildControls() {
    const buttons = document.getElementById("task-buttons");
    [...tasksByName.values()].forEach((task, position) => {
      const button = document.createElement("button");
      button.type = "button";
      button.dataset.task = task.name;
      button.textContent = task.name;
      button.title = (task.instruction || "no instruction") + " (key " + (position + 1) + ")";
      button.addEventListener("click", () => switchTask(task.name));
      buttons.append(button);
    });
    const variants = document.getElementById("variant-buttons");
    variants.hidden = !site.gridded;
    for (const variant of data.variants) {
      const button = document.createElement("button");
      button.type = "button";
      button.dataset.variant = variant.name;
      button.textContent = variant.name;
      button.title = variant.model + ", prompt " + JSON.stringify(variant.prompt_template);
      button.addEventListener("click", () => switchVariant(variant.name));
      variants.append(button);
    }
    if (data.categories_from) {
      // A corpus without labels: its colours are the clusters of one map, and the figures
      // about labels have none to measure.
      const byCluster = document.querySelector('[data-colour="category"]');
      byCluster.textContent = "Colour by cluster";
      byCluster.title = "Each post's cluster on " + data.categories_from + " (the corpus has no labels)";
      document.getElementById("selection-groups-title").textContent = "By cluster";
      document.getElementById("quality-title").textContent =
        "How does each task's space keep its neighbours? (no labels to separate)";
    }
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
    document.getElementById("labels-toggle").addEventListener("click", () => {
      state.labels = !state.labels;
      update();
    });
    for (const button of document.querySelectorAll("[data-drag]")) {
      button.addEventListener("click", () =>
        window.Plotly.relayout(plot, { dragmode: button.dataset.drag })
      );
    }
    document.getElementById("selection-clear").addEventListener("click", () => setSelection(null));
    document.getElementById("export-csv").addEventListener("click", () => exportSelection("csv"));
    document.getElementById("export-json").addEventListener("click", () => exportSelection("json"));
    const rows = document.getElementById("quality-rows");
    for (const task of data.tasks) {
      const row = document.createElement("tr");
      row.dataset.task = task.name;
      row.dataset.variant = task.variant;
      const figures = [
        task.quality.knn_accuracy,
        task.quality.silhouette,
        task.quality.trustworthiness,
        task.quality.overlap_with_reference,
      ];
      // Without labels the figures about them are null: say why, not a dash.
      const shown = figures.map((value) =>
        value === null && data.categories_from ? "no labels" : site.formatFigure(value)
      );
      for (const value of [task.name, ...shown]) {
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
      line.dataset.variant = task.variant;
      line.textContent = task.headline;
      if (task.controls) {  // its paraphrases and controls are on its own page
        const link = document.createElement("a");
        link.href = site.taskPageName(task.name) + "#effects";
        link.textContent = "Is it the instruction?";
        line.append(" ", link);
      }
      headlines.append(line);
    }
    document.getElementById("headlines-block").hidden = headlines.children.length === 0;
    buildVariantTable();
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
      else if (event.key === "Escape" && state.selection) setSelection(null);
      const position = Number(event.key);
      if (Number.isInteger(position) && position >= 1 && position <= site.taskNames.length) {
        switchTask(site.taskNames[position - 1]);
      }
    });
    window.addEventListener("hashchange", () => {
      const previous = current();
      readHash();
      document.getElementById("search").value = state.query;
      runSearch().then(() => update({ animate: previous !== current() }));
    });
    if (window.matchMedia) {
      window.matchMedia("(prefers-color-scheme: dark)").addEventListener("change", () => draw());
    }
    site.fillTaskPageLinks(document.getElementById("task-pages"), null);
  }

  /* Variant x task: each map's figure on what its task aims at, so one sees which variant
   * follows which instruction best. A cell switches the map. */
  function buildVariantTable() {
    const block = document.getElementById("variants-block");
    block.hidden = !site.gridded;
    if (!site.gridded) return;
    document.getElementById("variants-note").textContent =
      "Each cell: " + VARIANT_FIGURE + "; the best variant of each task is in bold. " +
      "Maps of every variant are aligned onto " + data.reference_variant + " · " +
      data.reference_task + ".";
    const head = document.getElementById("variant-head");
    head.replaceChildren();
    for (const name of ["Variant", ...site.taskNames]) {
      const cell = document.createElement("th");
      cell.scope = "col";
      const task = site.mapOf(data.reference_variant, name);
      cell.textContent = task && task.target ? name + " (" + task.target + ")" : name;
      head.append(cell);
    }
    const figureOf = (task) =>
      task.target ? task.quality["predicts_" + task.target] : task.quality.knn_accuracy;
    const best = new Map(
      site.taskNames.map((name) => [
        name,
        Math.max(...site.variantNames.map((variant) => figureOf(site.mapOf(variant, name)))),
      ])
    );
    const rows = document.getElementById("variant-rows");
    rows.replaceChildren();
    for (const variant of site.variantNames) {
      const row = document.createElement("tr");
      const name = document.createElement("th");
      name.scope = "row";
      name.textContent = variant + (variant === data.reference_variant ? " (reference)" : "");
      row.append(name);
      for (const taskName of site.taskNames) {
        const task = site.mapOf(variant, taskName);
        const cell = document.createElement("td");
        cell.dataset.variant = variant;
        cell.dataset.task = taskName;
        const button = document.createElement("button");
        button.type = "button";
        button.className = "link";
        button.textContent = site.formatFigure(figureOf(task));
        if (figureOf(task) === best.get(taskName)) button.classList.add("best");
        button.title = "Show " + site.mapTitle(task);
        button.addEventListener("click", () => {
          state.variant = variant;
          state.task = taskName;
          update({ animate: true });
        });
        cell.append(button);
        row.append(cell);
      }
      rows.append(row);
    }
  }

  readHash();
  buildControls();
  site.followBox(plot); // opening a side panel narrows the map
  runSearch()
    .then(() => update())
    .then(() => {
      let clickedPost = false;
      plot.on("plotly_click", (event) => {
        const point = event.points && event.points[0];
        if (point && point.data.meta === site.DOCUMENTS) {
          clickedPost = true;
          select(point.customdata);
        }
      });
      // Plotly's click comes first. Where it named no post (a label over the post lit its
      // cluster, and Plotly's redraw dropped what it was hovering), the post drawn under the
      // pointer, if any, is opened all the same.
      plot.addEventListener("click", (event) => {
        const missed = !clickedPost && (plot.layout.dragmode || "pan") === "pan";
        clickedPost = false;
        if (!missed) return;
        const doc = site.postAt(plot, current(), event.clientX, event.clientY);
        if (doc !== null) select(doc);
      });
      site.onLabelHover(plot, (number) => {
        hoveredCluster = number;
        site.restyleOpacity(plot, opacities());
      });
      site.keepLabelsApart(plot);
      site.hintScrolling();
      plot.on("plotly_selected", (event) => {
        if (!event || !event.points || redrawing) return;
        const picked = new Set();
        for (const point of event.points) {
          if (point.data.meta === site.DOCUMENTS) picked.add(point.customdata);
        }
        // After Plotly has finished the gesture: the redraw then also drops its outline.
        window.setTimeout(() => setSelection([...picked].sort((a, b) => a - b)));
      });
      plot.on("plotly_deselect", () => {
        if (!redrawing) setSelection(null);
      });
      plot.on("plotly_relayout", (change) => {
        if (change && change.dragmode) showTaskText();
      });
      // The map follows its own box, not only the window: opening or closing a side panel
      // narrows or widens it.
      document.body.dataset.ready = "true";
      performance.mark("qwen-drawn"); // for benchmarks/site_speed.py
      firstDrawn = true;
      return site.detailsReady();
    })
    .then(() => {
      showLists();
      return draw(); // with the previews in the hover texts
    })
    .then(() => {
      document.body.dataset.details = "loaded";
      performance.mark("qwen-details");
    });
})();

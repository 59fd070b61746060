/* The comparison page (every task of one variant side by side, or one task across the
 * variants) and the standalone page of one task (in every variant). The maps are linked:
 * hovering a post rings it in every map, selecting posts (box or lasso) in one map lights
 * the same posts in all of them, and hovering a cluster label lights that cluster's posts
 * everywhere, so one sees where a group goes under another instruction. */
(function () {
  "use strict";

  const site = window.QwenSite;
  const { data } = site;
  const only = document.body.dataset.task;
  const container = document.getElementById("maps");
  const picker = document.getElementById("compare-view");

  if (only && !site.taskNames.includes(only)) {
    container.textContent = "The task " + only + " is not in this site's data.";
    return;
  }

  /* What the comparison page shows, from its address: #variant=NAME (every task of it, the
   * reference variant's by default) or #task=NAME (that task in every variant). */
  function viewFromHash() {
    const params = new URLSearchParams(window.location.hash.slice(1));
    const task = params.get("task");
    if (site.gridded && site.taskNames.includes(task)) return "task=" + task;
    const variant = params.get("variant");
    return "variant=" + (site.variantNames.includes(variant) ? variant : data.reference_variant);
  }

  function mapsOf(view) {
    if (only) return site.variantNames.map((variant) => site.mapOf(variant, only));
    const [kind, name] = view.split("=");
    return kind === "task"
      ? site.variantNames.map((variant) => site.mapOf(variant, name))
      : site.taskNames.map((task) => site.mapOf(name, task));
  }

  if (picker) {
    picker.closest("label").hidden = !site.gridded;
    const options = [
      ...site.variantNames.map((name) => ["variant=" + name, "every task · " + name]),
      ...site.taskNames.map((name) => ["task=" + name, name + " · every variant"]),
    ];
    for (const [value, text] of options) {
      const option = document.createElement("option");
      option.value = value;
      option.textContent = text;
      picker.append(option);
    }
  }

  site.fillTaskPageLinks(document.getElementById("task-pages"), only || null);

  const legend = document.getElementById("legend");
  if (legend) {
    site.legendGroups.forEach(({ name, colour }) => {
      const item = document.createElement("span");
      const swatch = document.createElement("span");
      swatch.className = "swatch";
      swatch.style.background = colour;
      item.append(swatch, name);
      legend.append(item);
    });
  }

  function makeCard(task) {
    const card = document.createElement("section");
    card.className = "map-card";
    card.dataset.task = task.name;
    card.dataset.variant = task.variant;
    const title = document.createElement("h2");
    title.textContent = site.mapTitle(task);
    const instruction = document.createElement("p");
    instruction.className = "instruction";
    instruction.textContent = task.instruction ? "“" + task.instruction + "”" : "no instruction";
    const figures = document.createElement("p");
    figures.className = "figures";
    figures.textContent =
      "k-NN accuracy " + site.formatFigure(task.quality.knn_accuracy) +
      " · silhouette " + site.formatFigure(task.quality.silhouette) +
      " · trustworthiness " + site.formatFigure(task.quality.trustworthiness) +
      " · overlap with " + data.reference_task + " " +
      site.formatFigure(task.quality.overlap_with_reference) +
      (site.gridded && task.variant !== data.reference_variant
        ? " · with " + data.reference_variant + " " +
          site.formatFigure(task.quality.overlap_with_reference_variant)
        : "");
    const plot = document.createElement("div");
    plot.className = "plot";
    card.append(title, instruction, figures);
    if (only && task.description) {
      const description = document.createElement("p");
      description.textContent = task.description;
      card.append(description);
    }
    card.append(plot);
    if (only && task.controls) card.append(effectsCard(task));
    container.append(card);
    return { task, plot };
  }

  /* Is it the instruction? Each figure of the task: the instruction's value (a dot), its
   * spread over the instruction and its paraphrases (a bar), and two controls' values (S:
   * its own words shuffled, G: a generic instruction as long), each row on its own scale. */
  const FIGURE_NAMES = {
    probe_accuracy: "linear probe's accuracy on the " + (data.categories_from ? "clusters" : "labels"),
    probe_sentiment: "probe's rank correlation with sentiment",
    probe_hostility: "probe's rank correlation with hostility",
    probe_length: "probe's rank correlation with length",
    v_measure: "V-measure of k-means clusters",
    overlap_with_reference: "neighbourhood overlap with " + data.reference_task,
    cka_with_reference: "linear CKA with " + data.reference_task,
  };
  const ROLE_NAMES = { paraphrase: "paraphrase", shuffled: "S · its words shuffled", generic: "G · generic, as long" };
  const SVG = "http://www.w3.org/2000/svg";

  function svgElement(name, attributes) {
    const element = document.createElementNS(SVG, name);
    for (const [key, value] of Object.entries(attributes)) element.setAttribute(key, value);
    return element;
  }

  function effectBar(row) {
    const values = [row.instruction, row.paraphrase_min, row.paraphrase_max, row.shuffled, row.generic]
      .filter((value) => value !== null);
    let low = Math.min(...values);
    let high = Math.max(...values);
    const pad = Math.max((high - low) * 0.15, 0.005);
    low -= pad;
    high += pad;
    const x = (value) => (8 + ((value - low) / (high - low)) * 184).toFixed(1);
    // S is named above the bar and G below it, so two controls close together stay legible.
    const svg = svgElement("svg", { viewBox: "0 0 200 30", class: "effect-bar", role: "img" });
    svg.append(svgElement("line", { x1: 8, x2: 192, y1: 15, y2: 15, class: "axis" }));
    if (row.paraphrase_min !== null) {
      const width = Math.max(x(row.paraphrase_max) - x(row.paraphrase_min), 2);
      svg.append(svgElement("rect", { x: x(row.paraphrase_min), y: 10, width, height: 10, rx: 3, class: "spread" }));
    }
    for (const [role, mark, y] of [["shuffled", "S", 7], ["generic", "G", 29]]) {
      if (row[role] === null) continue;
      svg.append(svgElement("line", { x1: x(row[role]), x2: x(row[role]), y1: 9, y2: 21, class: "control" }));
      const text = svgElement("text", { x: x(row[role]), y, class: "control-mark" });
      text.textContent = mark;
      svg.append(text);
    }
    if (row.instruction !== null) {
      svg.append(svgElement("circle", { cx: x(row.instruction), cy: 15, r: 4, class: "own" }));
    }
    svg.setAttribute(
      "aria-label",
      "instruction " + site.formatFigure(row.instruction) +
        (row.paraphrases ? ", wordings " + site.formatFigure(row.paraphrase_min) + " to " + site.formatFigure(row.paraphrase_max) : "") +
        ", shuffled " + site.formatFigure(row.shuffled) + ", generic " + site.formatFigure(row.generic),
    );
    return svg;
  }

  function effectsCard(task) {
    const section = document.createElement("section");
    section.className = "effects";
    section.id = "effects";
    const heading = document.createElement("h3");
    heading.textContent = "Is it the instruction?";
    const target = task.controls.figures.find((row) => row.is_target);
    const verdict = document.createElement("p");
    verdict.className = "verdict";
    if (target && target.within_controls !== null) {
      const name = task.target;
      // The control to beat is the build's (instruction_effects.strongest_control), not redecided here.
      const shuffled = target.strongest_control === "shuffled";
      const control = shuffled ? "its shuffled words" : "a generic instruction";
      const strongest = target[target.strongest_control];
      verdict.textContent = target.within_controls
        ? "This instruction moves " + name + " no more than " + control + (shuffled ? " do." : " does.")
        : "This instruction moves " + name + " beyond its controls: " +
          site.formatFigure(target.instruction) + " against " + site.formatFigure(strongest) +
          " for " + control + ".";
      verdict.dataset.within = String(target.within_controls);
    }
    const note = document.createElement("p");
    note.className = "note";
    const paraphrases = task.controls.prompts.filter((p) => p.role === "paraphrase").length;
    note.textContent =
      "Each figure, full dimension, for this instruction (●)" +
      (paraphrases ? ", its spread over the instruction and " + paraphrases + " paraphrase" + (paraphrases > 1 ? "s" : "") + " (bar)" : "") +
      ", and two controls: S, its own words shuffled; G, a generic instruction as long. Each row has its own scale.";
    const table = document.createElement("table");
    const head = table.createTHead().insertRow();
    for (const label of ["figure", "this", "wordings", "S", "G", ""]) {
      const cell = document.createElement("th");
      cell.textContent = label;
      head.append(cell);
    }
    const body = table.createTBody();
    for (const row of task.controls.figures) {
      const line = body.insertRow();
      line.dataset.figure = row.figure;
      if (row.is_target) line.className = "target";
      const name = row.is_target
        ? "target: neighbours agree on " + row.figure.replace("predicts_", "")
        : FIGURE_NAMES[row.figure] || row.figure;
      const cells = [
        name,
        site.formatFigure(row.instruction),
        row.paraphrases ? site.formatFigure(row.paraphrase_min) + " – " + site.formatFigure(row.paraphrase_max) : "–",
        site.formatFigure(row.shuffled),
        site.formatFigure(row.generic),
      ];
      for (const text of cells) line.insertCell().textContent = text;
      line.insertCell().append(effectBar(row));
    }
    const scroller = document.createElement("div");
    scroller.className = "scrolls";
    scroller.append(table);
    const prompts = document.createElement("details");
    const summary = document.createElement("summary");
    summary.textContent = "The prompts compared";
    const list = document.createElement("ul");
    for (const prompt of task.controls.prompts) {
      const item = document.createElement("li");
      const role = document.createElement("span");
      role.className = "role";
      role.textContent = (ROLE_NAMES[prompt.role] || prompt.role) + ": ";
      const words = document.createElement("code");
      words.textContent = prompt.instruction;
      item.append(role, words);
      list.append(item);
    }
    prompts.append(summary, list);
    section.append(heading, verdict, note, scroller, prompts);
    return section;
  }
  let cards = [];


  const labelsToggle = document.getElementById("labels-toggle");
  const status = document.getElementById("linked-status");
  const clear = document.getElementById("linked-clear");
  let showLabels = true;
  let selection = null; // a Set of document indices, or null
  let selectedIn = null; // the task whose map it was drawn in
  let clearing = false; // dropping Plotly's own selection is not the reader's deselect

  function ringTrace() {
    return {
      type: "scatter",
      mode: "markers",
      name: "linked",
      x: [],
      y: [],
      hoverinfo: "skip",
      showlegend: false,
      marker: {
        symbol: "circle-open",
        size: 16,
        color: site.prefersDark() ? "#ffffff" : "#111111",
        line: { width: 2.5 },
      },
    };
  }

  function tracesOf(task) {
    const labels = site.labelTrace(task, showLabels);
    if (!only) labels.textfont.size = 11; // panels a third of the page wide
    return [...site.categoryTraces(task), labels, ringTrace()];
  }

  // The ring and the labels are the last two traces of every map.
  const ringOf = (plot) => plot.data.length - 1;
  const labelsOf = (plot) => plot.data.length - 2;

  /* Ring a post in every map but the hovered one (which shows its own hover label, and
   * whose redraw would end that hover). */
  function ring(index, hovered) {
    for (const { task, plot } of cards) {
      if (plot === hovered) continue;
      const at =
        index === null
          ? { x: [[]], y: [[]], customdata: [[]] }
          : { x: [[task.x[index]]], y: [[task.y[index]]], customdata: [[index]] };
      window.Plotly.restyle(plot, at, [ringOf(plot)]);
    }
  }

  function light(perDocument) {
    return Promise.all(cards.map(({ plot }) => site.restyleOpacity(plot, perDocument)));
  }

  function showStatus() {
    if (!status) return;
    status.textContent = selection
      ? selection.size + " posts selected in the " + selectedIn + " map, lit in every map"
      : "Select posts with the box or lasso tool of any map to follow them across the maps.";
    if (clear) clear.hidden = !selection;
  }

  function setSelection(picked, taskName) {
    selection = picked && picked.size ? picked : null;
    selectedIn = selection ? taskName : null;
    showStatus();
    return light(site.dimmedUnlessIn(selection));
  }

  function link(task, plot) {
    plot.on("plotly_hover", (event) => {
      const point = event.points && event.points[0];
      if (point && point.data.meta === site.DOCUMENTS) ring(point.customdata, plot);
    });
    plot.on("plotly_unhover", () => ring(null, plot));
    site.onLabelHover(plot, (number) =>
      light(
        site.dimmedUnlessIn(number === null ? selection : site.clusterMembers(task, number))
      )
    );
    site.keepLabelsApart(plot);
    plot.on("plotly_selected", (event) => {
      if (!event || !event.points || clearing) return;
      const picked = new Set();
      for (const point of event.points) {
        if (point.data.meta === site.DOCUMENTS) picked.add(point.customdata);
      }
      // Once Plotly has finished the gesture, its own selection (outline, greyed points) goes:
      // the selection shows as the same bright posts in every map instead.
      window.setTimeout(() => {
        clearing = true;
        window.Plotly.update(plot, { selectedpoints: [null] }, { selections: [] }).then(() => {
          clearing = false;
          setSelection(picked, site.mapTitle(task));
        });
      });
    });
    plot.on("plotly_deselect", () => {
      if (!clearing) setSelection(null);
    });
  }

  /* Draw the maps of a view; the selection, if any, stays lit in them. */
  let renders = 0;
  function render(view) {
    const mine = ++renders;
    delete container.dataset.settled;
    for (const { plot } of cards) window.Plotly.purge(plot);
    container.replaceChildren();
    // Every card goes into the grid before any plot is drawn: a plot drawn while its card is
    // the grid's only one takes the full width and overflows its panel once the others arrive.
    cards = mapsOf(view).map(makeCard);
    if (picker) picker.value = view;
    const drawn = cards.map(({ task, plot }) => {
      site.followBox(plot); // a plot follows its panel's size, not only the window's
      const layout = site.baseLayout();
      layout.showlegend = Boolean(only);
      return window.Plotly.newPlot(
        plot,
        tracesOf(task),
        layout,
        site.plotConfig(task)
      ).then(() => {
        link(task, plot);
      });
    });
    return Promise.all(drawn)
      .then(() => light(site.dimmedUnlessIn(selection)))
      .then(() => {
        // Every map of the newest view drawn and lit: what a script driving the page waits on.
        if (mine === renders) container.dataset.settled = String(mine);
      });
  }

  const drawn = [render(viewFromHash())];
  // A link to a task's card (#effects) arrives before the card is made: go there once it is.
  const target = window.location.hash && document.getElementById(window.location.hash.slice(1));
  if (only && target) target.scrollIntoView();
  if (picker) {
    picker.addEventListener("change", () => {
      window.history.replaceState(null, "", "#" + picker.value);
      render(picker.value);
    });
    window.addEventListener("hashchange", () => render(viewFromHash()));
  }

  if (labelsToggle) {
    labelsToggle.setAttribute("aria-pressed", "true");
    labelsToggle.addEventListener("click", () => {
      showLabels = !showLabels;
      labelsToggle.setAttribute("aria-pressed", String(showLabels));
      for (const { plot } of cards) {
        window.Plotly.restyle(plot, { visible: showLabels }, [labelsOf(plot)]);
      }
    });
  }
  if (clear) clear.addEventListener("click", () => setSelection(null));
  showStatus();

  Promise.all(drawn)
    .then(() => {
      document.body.dataset.ready = "true";
      return site.detailsReady();
    })
    .then(() =>
      // The hover texts now carry the previews.
      Promise.all(
        cards.map(({ task, plot }) => {
          const texts = site.categoryTraces(task).map((trace) => trace.text);
          return window.Plotly.restyle(plot, { text: texts }, texts.map((_, index) => index));
        })
      )
    )
    .then(() => {
      document.body.dataset.details = "loaded";
    });
  if (window.matchMedia) {
    window.matchMedia("(prefers-color-scheme: dark)").addEventListener("change", () => {
      for (const plot of container.querySelectorAll(".plot")) {
        window.Plotly.relayout(plot, site.baseLayout());
      }
    });
  }
})();

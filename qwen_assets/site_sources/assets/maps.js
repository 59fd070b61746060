/* The comparison page (every task side by side) and the standalone page of one task. */
(function () {
  "use strict";

  const site = window.QwenSite;
  const { data } = site;
  const only = document.body.dataset.task;
  const container = document.getElementById("maps");
  const tasks = only ? data.tasks.filter((task) => task.name === only) : data.tasks;

  if (only && tasks.length === 0) {
    container.textContent = "The task " + only + " is not in this site's data.";
    return;
  }

  site.fillTaskPageLinks(document.getElementById("task-pages"), only || null);

  const legend = document.getElementById("legend");
  if (legend) {
    data.categories.forEach((name, category) => {
      const item = document.createElement("span");
      const swatch = document.createElement("span");
      swatch.className = "swatch";
      swatch.style.background = site.colourOf(category);
      item.append(swatch, name);
      legend.append(item);
    });
  }

  // Every card goes into the grid before any plot is drawn: a plot drawn while its card is
  // the grid's only one takes the full width and overflows its panel once the others arrive.
  const cards = tasks.map((task) => {
    const card = document.createElement("section");
    card.className = "map-card";
    card.dataset.task = task.name;
    const title = document.createElement("h2");
    title.textContent = task.name;
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
      site.formatFigure(task.quality.overlap_with_reference);
    const plot = document.createElement("div");
    plot.className = "plot";
    card.append(title, instruction, figures);
    if (only && task.description) {
      const description = document.createElement("p");
      description.textContent = task.description;
      card.append(description);
    }
    card.append(plot);
    container.append(card);
    return { task, plot };
  });

  // A plot follows its panel's size (a grid reflow, a rotated phone), not only the window's.
  const resizer = window.ResizeObserver
    ? new ResizeObserver((entries) => {
        for (const entry of entries) {
          if (entry.target.data) window.Plotly.Plots.resize(entry.target);
        }
      })
    : null;

  const drawn = cards.map(({ task, plot }) => {
    const layout = site.baseLayout();
    layout.showlegend = Boolean(only);
    return window.Plotly.newPlot(
      plot,
      site.categoryTraces(task),
      layout,
      site.plotConfig("qwen-embedding-" + task.name)
    ).then(() => {
      if (resizer) resizer.observe(plot);
    });
  });

  Promise.all(drawn).then(() => {
    document.body.dataset.ready = "true";
  });
  if (window.matchMedia) {
    window.matchMedia("(prefers-color-scheme: dark)").addEventListener("change", () => {
      for (const plot of container.querySelectorAll(".plot")) {
        window.Plotly.relayout(plot, site.baseLayout());
      }
    });
  }
})();

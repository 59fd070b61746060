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

  const drawn = tasks.map((task) => {
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
    const layout = site.baseLayout();
    layout.showlegend = Boolean(only);
    return window.Plotly.newPlot(
      plot,
      site.categoryTraces(task),
      layout,
      site.plotConfig("qwen-embedding-" + task.name)
    );
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

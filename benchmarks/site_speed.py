"""The site in headless Chromium: payload bytes, time to first render and to switch tasks,
for every site the other benchmarks built (800 documents and the whole corpus)."""

from __future__ import annotations

import json
import statistics

from benchmarks.growth import SIZES as GROWTH_SIZES
from benchmarks.incremental import PROJECT as INCREMENTAL_PROJECT
from benchmarks.render_scale import PROJECT as RENDER_SCALE_PROJECT
from benchmarks.results import table, write_section
from benchmarks.workspace import work_dir
from qwen_assets.testing import CHROMIUM_ARGS, CHROMIUM_ENV, chromium_path

PUBLISHED_DEMO_BYTES = 1_234_932  # the published demo's data.json, 800 documents x 4 tasks
RUNS = 3


BENCHMARK_PROJECTS = {
    INCREMENTAL_PROJECT,
    RENDER_SCALE_PROJECT,
    *(f"growth-{size}" for size in GROWTH_SIZES),
}

SWITCH = """async (name) => {
  const plot = document.getElementById('plot');
  const started = performance.now();
  const drawn = new Promise((resolve) => plot.once('plotly_afterplot', resolve));
  document.querySelector(`#task-buttons [data-task="${name}"]`).click();
  await drawn;
  return performance.now() - started;
}"""


def measure(browser, site) -> dict:
    payload = json.loads((site / "data.json").read_text())
    tasks = [task["name"] for task in payload["tasks"]]
    first_render, loaded, switches = [], [], []
    for _ in range(RUNS):
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        page.goto((site / "index.html").as_uri())
        page.wait_for_selector("body[data-details='loaded']", timeout=120_000)
        # navigation start -> the map drawn (pan, zoom, select), and -> its details loaded
        # (hover previews, panels); the page marks both.
        drawn, details = page.evaluate(
            "() => ['qwen-drawn', 'qwen-details'].map("
            "(name) => performance.getEntriesByName(name)[0].startTime)"
        )
        first_render.append(drawn)
        loaded.append(details)
        for name in tasks[1:] + tasks[:1]:
            switches.append(page.evaluate(SWITCH, name))
            page.wait_for_timeout(700)  # let the transition finish
        page.close()
    return {
        "documents": len(payload["documents"]["id"]),
        "bytes": (site / "data.json").stat().st_size,
        "first_draw_bytes": (site / "data.js").stat().st_size,
        "render_ms": statistics.median(first_render),
        "details_ms": statistics.median(loaded),
        "switch_ms": statistics.median(switches),
        "webgl": len(payload["documents"]["id"]) > payload["render"]["webgl_above"],
    }


def run() -> str:
    from playwright.sync_api import sync_playwright

    # Only the projects the other benchmarks build, so every row comes from a command here.
    sites = sorted(
        (
            path.parent
            for path in work_dir().glob("*/site/data.json")
            if path.parent.parent.name in BENCHMARK_PROJECTS
        ),
        key=lambda site: (site / "data.json").stat().st_size,
    )
    if not sites:
        raise SystemExit("no built site: run the incremental and growth benchmarks first")
    rows = []
    with sync_playwright() as playwright:
        executable = chromium_path()
        if not executable:
            raise SystemExit(f"no chromium: apt-get install chromium, or set {CHROMIUM_ENV}")
        browser = playwright.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS)
        for site in sites:
            figures = measure(browser, site)
            rows.append(
                [
                    f"{figures['documents']:,} ({site.parent.name})",
                    f"{figures['bytes']:,}",
                    f"{figures['bytes'] * 1000 / figures['documents'] / 1e3:,.0f} kB",
                    f"{figures['first_draw_bytes']:,}",
                    f"{figures['render_ms']:.0f}",
                    f"{figures['details_ms']:.0f}",
                    f"{figures['switch_ms']:.0f}",
                    "WebGL, no animation" if figures["webgl"] else "SVG, animated",
                ]
            )
        browser.close()
    body = (
        f"data.json bytes (the published demo: {PUBLISHED_DEMO_BYTES:,} bytes for 800 documents "
        "x 4 tasks); time from navigation to the drawn map (it pans, zooms and selects: the "
        "page's `qwen-drawn` mark) and to its details loaded (hover previews, panels: "
        "`qwen-details`); from a task button's click to the redrawn plot (for SVG, after its "
        f"600 ms animation). Median of {RUNS} loads, every task, headless Chromium from disk. `render-all` is the whole corpus as `python -m benchmarks.run "
        "render-scale` builds it (its vectors come from a hashing vectoriser: drawing cost "
        "depends on the number of posts, not on what the vectors mean). The pages load "
        "`data.js` (everything a map needs) before the first draw, and `details.js` (the "
        "neighbour lists and the texts or previews) after it.\n\n"
        + table(
            [
                "documents",
                "data.json bytes",
                "per 1,000 docs",
                "data.js bytes (before the first draw)",
                "first render ms",
                "details loaded ms",
                "switch ms",
                "rendering",
            ],
            rows,
        )
    )
    write_section("site", "The site in Chromium", body)
    return body


if __name__ == "__main__":
    print(run())

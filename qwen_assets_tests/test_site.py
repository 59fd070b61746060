"""The published site in a real browser (Debian's chromium driven by Playwright), opened
from disk and from a loopback HTTP server, built from the session's real pipeline run."""

import csv
import io
import json
import math
import os
import re
import shutil
import threading
from collections.abc import Callable, Iterator
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlparse

import numpy as np
import pytest
from PIL import Image

from qwen_assets.pipeline.site import (
    read_payload,
    task_page_name,
    write_pages,
    write_payload,
)
from qwen_assets_tests.conftest import REPO

# Runs every page's scripts this many times slower (Chromium's CPU throttling), as on a
# loaded CI machine: races between a gesture and a redraw show up here first.
SLOWDOWN_ENV = "QWEN_ASSETS_BROWSER_SLOWDOWN"
ARTIFACTS = REPO / "test-artifacts"
HOSTILE = '<img src=x onerror="window.__pwned=1"><script>window.__pwned=2</script> & "quotes"'
FORMULA = '=HYPERLINK("http://127.0.0.1:9/x","click me")'  # a post a spreadsheet would run


def loneliest_point(payload: dict) -> int:
    """The post farthest from any other on the default map (with room to spare for FORMULA's
    post, 1): hovering there can only find it, however the layout falls."""
    task = next(t for t in payload["tasks"] if t["name"] == payload["reference_task"])
    points = np.c_[task["x"], task["y"]]
    gaps = np.linalg.norm(points[:, None] - points[None], axis=2)
    np.fill_diagonal(gaps, np.inf)
    gaps[1] = 0
    return int(gaps.min(axis=1).argmax())


def hostile_doc(payload: dict) -> int:
    return next(
        i for i, text in enumerate(payload["documents"]["text"]) if text.startswith(HOSTILE)
    )


@pytest.fixture(scope="session")
def site_dir(built, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The built site, with one document's text replaced by a hostile one."""
    copy = tmp_path_factory.mktemp("site") / "site"
    shutil.copytree(built.root / "site", copy)
    payload = read_payload(copy)
    hostile = loneliest_point(payload)
    payload["documents"]["text"][hostile] = HOSTILE + "\n" + payload["documents"]["text"][hostile]
    payload["documents"]["text"][1] = FORMULA + "\n" + payload["documents"]["text"][1]
    write_payload(payload, copy)
    return copy


@pytest.fixture(scope="session")
def payload(site_dir: Path) -> dict:
    return read_payload(site_dir)


class QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture(scope="session")
def http_root(site_dir: Path) -> Iterator[str]:
    """Any static host will do: the standard library's, on 127.0.0.1."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), partial(QuietHandler, directory=site_dir))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/"
    server.shutdown()


@pytest.fixture(params=["file", "http"])
def root(request, site_dir: Path) -> str:
    """The site opened from disk, and served: for what the origin can change (loading the
    data, staying on it, running nothing). Behaviour once loaded is tested from disk."""
    if request.param == "file":
        return site_dir.as_uri() + "/"
    return request.getfixturevalue("http_root")


class Page:
    """A browser page that records console errors and every request it makes."""

    def __init__(self, browser, root: str, **context_options) -> None:
        self.context = browser.new_context(**context_options)
        self.page = self.context.new_page()
        self.root = root
        self.errors: list[str] = []
        self.requests: list[str] = []
        self.page.on("console", self._console)
        self.page.on("pageerror", lambda error: self.errors.append(str(error)))
        self.page.on("request", lambda request: self.requests.append(request.url))
        slowdown = float(os.environ.get(SLOWDOWN_ENV, "1"))
        if slowdown > 1:
            self.context.new_cdp_session(self.page).send(
                "Emulation.setCPUThrottlingRate", {"rate": slowdown}
            )

    def _console(self, message) -> None:
        if message.type == "error":
            self.errors.append(message.text)

    def open(self, path: str = "index.html") -> None:
        self.page.goto(self.root + path)
        self.page.wait_for_selector("body[data-details='loaded']", timeout=30_000)

    def after_redraw(self, action: Callable[[], object], where: str = "#plot") -> None:
        """Does ``action``, then waits until the page marks the redraw it caused as come to
        rest (``data-settled`` on the map, or on the comparison's grid), instead of guessing
        how long an animation takes."""
        before = self.page.get_attribute(where, "data-settled")
        action()
        self.page.wait_for_function(
            """([where, before]) => {
              const mark = document.querySelector(where).dataset.settled;
              return mark !== undefined && mark !== before;
            }""",
            arg=[where, before],
        )

    def foreign_requests(self) -> list[str]:
        return [url for url in self.requests if not url.startswith(self.root)]

    def trace_x(self) -> list[float]:
        return self.page.evaluate("() => document.getElementById('plot').data[0].x.slice(0, 20)")

    def drawn_at_its_size(self, plot: str = "#plot") -> None:
        """Waits until the map is drawn at the size of its box: a panel that opens narrows
        the box at once, and Plotly redraws into it a moment later. Positions read in
        between point where the posts no longer are."""
        self.page.wait_for_function(
            """(selector) => {
              const plot = document.querySelector(selector);
              const layout = plot && plot._fullLayout;
              // clientWidth is rounded; Plotly keeps the fraction.
              return !!layout && Math.abs(layout.width - plot.clientWidth) < 1
                && Math.abs(layout.height - plot.clientHeight) < 1;
            }""",
            arg=plot,
        )

    def point_position(self, doc_index: int, plot: str = "#plot") -> tuple[float, float]:
        """Where a document's point is drawn on the page, from Plotly's own axes."""
        return self.all_positions(plot)[doc_index]

    def label_position(self, label: int, plot: str = "#plot") -> tuple[float, float]:
        """The middle of a cluster label's text as drawn."""
        self.drawn_at_its_size(plot)
        box = self.page.locator(f"{plot} .textpoint text").nth(label).bounding_box()
        return box["x"] + box["width"] / 2, box["y"] + box["height"] / 2

    def all_positions(self, plot: str = "#plot") -> list[tuple[float, float]]:
        self.drawn_at_its_size(plot)
        return [tuple(at) for at in self.page.evaluate(PIXELS, plot)]

    def opacities(self, plot: str = "#plot") -> dict[int, float]:
        """Per document, the opacity its point is drawn with."""
        found = self.page.evaluate(
            """(selector) => {
              const plot = document.querySelector(selector);
              const seen = {};
              for (const trace of plot.data.filter((t) => t.meta === 'documents')) {
                const opacity = trace.marker.opacity;
                trace.customdata.forEach((doc, at) => {
                  seen[doc] = Array.isArray(opacity) ? opacity[at] : opacity;
                });
              }
              return seen;
            }""",
            plot,
        )
        return {int(doc): value for doc, value in found.items()}

    def drag(self, start: tuple[float, float], end: tuple[float, float]) -> None:
        self.page.mouse.move(*start)
        self.page.mouse.down()
        for step in range(1, 11):
            self.page.mouse.move(
                start[0] + (end[0] - start[0]) * step / 10,
                start[1] + (end[1] - start[1]) * step / 10,
            )
        self.page.mouse.up()

    def close(self) -> None:
        self.context.close()


# Pixel positions on the page of a plot's documents (by document index), from Plotly's axes.
PIXELS = """(selector) => {
  const plot = document.querySelector(selector);
  const layout = plot._fullLayout, box = plot.getBoundingClientRect();
  const at = (x, y) => [box.left + layout.xaxis._offset + layout.xaxis.l2p(x),
                        box.top + layout.yaxis._offset + layout.yaxis.l2p(y)];
  const found = [];
  for (const trace of plot.data) {
    if (trace.meta === 'documents') {
      trace.customdata.forEach((doc, i) => { found[doc] = at(trace.x[i], trace.y[i]); });
    }
  }
  return found;
}"""


@pytest.fixture
def page(browser, site_dir: Path) -> Iterator[Page]:
    """The explorer's page, opened from disk."""
    opened = Page(browser, site_dir.as_uri() + "/", viewport={"width": 1280, "height": 900})
    yield opened
    opened.close()


@pytest.fixture
def page_on_each_origin(browser, root) -> Iterator[Page]:
    opened = Page(browser, root, viewport={"width": 1280, "height": 900})
    yield opened
    opened.close()


def test_the_explorer_loads_cleanly_and_stays_on_its_origin(page_on_each_origin, payload):
    page = page_on_each_origin
    page.open()
    assert page.errors == []
    assert page.foreign_requests() == []
    buttons = page.page.locator("#task-buttons button")
    assert buttons.all_inner_texts() == [task["name"] for task in payload["tasks"]]
    rows = page.page.locator("#quality-rows tr").count()
    assert rows == len(payload["tasks"])


def test_what_the_page_hides_takes_no_room(page, payload):
    """Without variants the variant buttons are hidden, and so is every element the page
    marks hidden, whatever display its class gives it."""
    page.open()
    assert len(payload["variants"]) == 1, "a project without variants"
    assert not page.page.locator("#variant-buttons").is_visible()
    shown = page.page.evaluate(
        "() => [...document.querySelectorAll('[hidden]')]"
        ".filter(e => getComputedStyle(e).display !== 'none').map(e => e.id || e.className)"
    )
    assert shown == []


def top_level_rules(css: str) -> int:
    """How many rules a stylesheet holds at its top level (an @media block is one)."""
    css = re.sub(r"/\*.*?\*/", "", css, flags=re.S)
    depth = rules = 0
    for character in css:
        if character == "{":
            rules += depth == 0
            depth += 1
        elif character == "}":
            depth -= 1
    return rules


def test_the_browser_reads_every_rule_of_the_stylesheet(browser, http_root, site_dir):
    """A stray brace makes the browser drop the rule after it, silently: every rule written
    in the stylesheet is one the page has (over HTTP: a file page may not read its rules)."""
    page = Page(browser, http_root)
    try:
        page.open()
        read = page.page.evaluate(
            "() => [...document.styleSheets].find((sheet) => sheet.href.endsWith('style.css'))"
            ".cssRules.length"
        )
    finally:
        page.close()
    written = (site_dir / "assets" / "style.css").read_text()
    assert read == top_level_rules(written)


def test_every_task_button_moves_the_points_and_renders_a_picture(page, payload):
    page.open()
    seen, pictures = [], set()
    for task in payload["tasks"]:
        button = f"#task-buttons button[data-task='{task['name']}']"
        if page.page.get_attribute(button, "aria-pressed") == "true":
            page.page.click(button)  # the task shown already: nothing is redrawn
        else:
            page.after_redraw(lambda button=button: page.page.click(button))
        assert f"task={task['name']}" in page.page.url
        assert (
            page.page.get_attribute(
                f"#task-buttons button[data-task='{task['name']}']", "aria-pressed"
            )
            == "true"
        )
        seen.append(tuple(page.trace_x()))
        shot = page.page.locator("#plot").screenshot()
        ARTIFACTS.mkdir(exist_ok=True)
        (ARTIFACTS / f"explorer-{task['name']}.png").write_bytes(shot)
        drawn = page.page.locator("#plot .scatterlayer .trace .point").count()
        assert drawn >= len(payload["documents"]["id"]), f"the {task['name']} map drew {drawn}"
        picture = Image.open(io.BytesIO(shot)).convert("RGB")
        background, *_ = max(picture.getcolors(1 << 24), key=lambda count: count[0])
        inked = 1 - background / (picture.width * picture.height)
        assert inked > 0.02, f"the {task['name']} picture is {inked:.1%} points, lines and words"
        pictures.add(shot)
    assert len(set(seen)) == len(payload["tasks"]), "each task draws its own coordinates"
    assert len(pictures) == len(payload["tasks"]), "and each picture is its own"
    assert page.errors == []


def test_hovering_a_point_shows_its_category_and_preview(page, payload):
    page.open()
    doc = 5
    page.page.mouse.move(*page.point_position(doc))
    tooltip = page.page.locator(".hoverlayer .hovertext")
    tooltip.wait_for(timeout=5_000)
    text = tooltip.text_content()
    category = payload["categories"][payload["documents"]["category"][doc]]
    assert category in text
    first_words = " ".join(payload["documents"]["text"][doc].split()[:3])
    assert first_words in " ".join(text.split())


def isolated_doc(page: Page, among: list[int] | None = None) -> int:
    """The post (of ``among``, default all) whose point is farthest from any other point and
    any label on the drawn map: a click there can only land on it."""
    positions = page.all_positions()
    labels = [
        page.label_position(i) for i in range(page.page.locator("#plot .textpoint text").count())
    ]

    def room(doc: int) -> float:
        x, y = positions[doc]
        return min(
            (x - ox) ** 2 + (y - oy) ** 2
            for other, (ox, oy) in enumerate([*positions, *labels])
            if other != doc
        )

    return max(range(len(positions)) if among is None else among, key=room)


def test_clicking_a_point_opens_its_neighbours_and_the_link_restores_the_view(page, payload):
    page.open("index.html#task=topic")
    doc = isolated_doc(page)
    page.page.mouse.click(*page.point_position(doc))
    panel = page.page.locator("#panel")
    panel.wait_for(state="visible")
    doc_id = payload["documents"]["id"][doc]
    assert page.page.inner_text("#doc-id") == doc_id
    neighbours = page.page.locator("#neighbours button")
    assert neighbours.count() == payload["neighbours"]
    topic = next(task for task in payload["tasks"] if task["name"] == "topic")
    first = topic["neighbours"][doc][0]
    assert neighbours.first.get_attribute("data-doc") == payload["documents"]["id"][first]
    scores = [float(s) for s in page.page.locator("#neighbours .score").all_inner_texts()]
    assert scores == sorted(scores, reverse=True)
    reference = payload["reference_task"]
    theirs = next(task for task in payload["tasks"] if task["name"] == reference)["neighbours"]
    kept = len(set(topic["neighbours"][doc]) & set(theirs[doc]))
    assert page.page.inner_text("#doc-kept") == (
        f"Kept {kept} of its {payload['neighbours']} {reference}-task neighbours"
    )

    # Each card shows its post's preview whole, or cut after a whole word with an ellipsis.
    chars = payload["preview_chars"]
    texts = payload["documents"].get("text") or payload["documents"]["preview"]
    for card, index in zip(neighbours.all_inner_texts(), topic["neighbours"][doc], strict=True):
        shown = card.split(" · ", 1)[1]
        whole = " ".join(texts[index][:chars].split())
        if not shown.endswith("…"):
            assert " ".join(shown.split()) == whole
            continue
        kept = " ".join(shown[:-1].split())
        assert whole.startswith(kept), (kept, whole)
        assert len(whole) == len(kept) or whole[len(kept)] == " " or len(kept) < 60, (kept, whole)

    neighbours.first.click()
    assert page.page.inner_text("#doc-id") == payload["documents"]["id"][first]
    url = page.page.url
    assert "task=topic" in url and "doc=" in url

    page.page.goto("about:blank")
    page.page.goto(url)
    page.page.wait_for_selector("body[data-details='loaded']")
    assert page.page.inner_text("#doc-id") == payload["documents"]["id"][first]
    assert page.page.get_attribute("#task-buttons [data-task='topic']", "aria-pressed") == "true"
    assert page.errors == []


def longest_word(text: str) -> int:
    return max((len(word) for word in text.split()), default=0)


def test_a_post_whose_neighbours_hold_the_longest_unbroken_strings_fits_its_panel(page, payload):
    """Texts carry unbroken runs (ASCII art, ^^^^ underlines, URLs): the neighbour cards
    wrap them inside the panel."""
    documents = payload["documents"]
    chars = payload["preview_chars"]
    previews = [text[:chars] for text in documents.get("text") or documents["preview"]]
    topic = next(task for task in payload["tasks"] if task["name"] == "topic")

    def widest(d: int) -> int:  # the post's preview, and its neighbours' cards (90 characters)
        cards = [longest_word(previews[n][:90]) for n in topic["neighbours"][d]]
        return max(longest_word(previews[d]), *cards)

    doc = max(range(len(previews)), key=widest)
    assert widest(doc) > 30, "a long unbroken string to wrap"
    page.open(f"index.html#task=topic&doc={documents['id'][doc]}")
    page.page.locator("#panel").wait_for(state="visible")
    outside = page.page.evaluate(
        """() => {
          const box = document.getElementById('panel').getBoundingClientRect();
          return [...document.querySelectorAll('#panel, #panel *')]
            .filter(e => e.getBoundingClientRect().right > box.right + 1
                         || e.scrollWidth > e.clientWidth + 1)
            .map(e => e.tagName + '.' + e.className);
        }"""
    )
    assert outside == []


def test_the_change_colours_are_each_posts_share_of_neighbours_kept(page, payload):
    """Coloured by neighbourhood change, each post's value is the Jaccard index of its
    neighbours on this map and on the reference task's, worked out here from the payload."""
    page.open("index.html#task=topic")
    page.after_redraw(lambda: page.page.click("[data-colour='change']"))
    docs, values = page.page.evaluate(
        """() => {
          const trace = document.getElementById('plot').data.find((t) => t.meta === 'documents');
          return [trace.customdata, trace.marker.color];
        }"""
    )
    tasks = {task["name"]: task for task in payload["tasks"]}
    ours, theirs = tasks["topic"]["neighbours"], tasks[payload["reference_task"]]["neighbours"]
    assert sorted(docs) == list(range(len(payload["documents"]["id"])))
    for doc, value in zip(docs, values, strict=True):
        mine, reference = set(ours[doc]), set(theirs[doc])
        assert value == pytest.approx(len(mine & reference) / len(mine | reference)), doc
    assert 0 <= min(values) < max(values) <= 1, "posts keep different shares"
    assert page.errors == []


def test_a_hostile_document_shows_as_text_and_runs_nothing(page_on_each_origin, payload):
    page = page_on_each_origin
    hostile = hostile_doc(payload)
    page.open(f"index.html#doc={payload['documents']['id'][hostile]}")
    assert HOSTILE in page.page.inner_text("#doc-text")
    assert page.page.locator("#panel img, #panel script").count() == 0
    page.page.mouse.move(*page.point_position(hostile))
    tooltip = page.page.locator(".hoverlayer .hovertext")
    tooltip.wait_for(timeout=5_000)
    assert "<img src=x" in tooltip.text_content()
    shown = tooltip.text_content()  # its lines joined without the spaces they wrapped at
    assert '&"quotes"' in shown.replace(" ", ""), "quotes and ampersands read as written"
    assert "&quot;" not in tooltip.text_content() and "&amp;" not in tooltip.text_content()
    assert page.page.locator(".hoverlayer image, .hoverlayer img").count() == 0
    assert page.page.evaluate("() => window.__pwned") is None
    assert page.foreign_requests() == []
    planted = [url for url in page.requests if url.rstrip("/").endswith("/x")]
    assert planted == [], "the planted <img src=x> was never fetched, from here or elsewhere"


def test_search_colour_modes_and_keys(page, payload):
    page.open()
    page.after_redraw(lambda: page.page.fill("#search", "space"))
    texts = payload["documents"]["text"]
    expected = {doc for doc, text in enumerate(texts) if "space" in text.lower()}
    assert page.page.inner_text("#search-count") == f"{len(expected)} of {len(texts)} match"
    assert "q=space" in page.page.url
    lit = {doc for doc, opacity in page.opacities().items() if opacity == 1}
    assert lit == expected, "exactly the posts that hold the word stay bright"
    # The link restores the search: the same posts light up on a fresh page.
    page.open(f"index.html#{page.page.url.split('#', 1)[1]}")
    page.page.wait_for_function("() => document.getElementById('search-count').textContent")
    page.page.wait_for_function("() => document.getElementById('plot').dataset.settled")
    assert page.page.input_value("#search") == "space"
    assert {doc for doc, opacity in page.opacities().items() if opacity == 1} == expected

    page.page.click("[data-colour='change']")
    colour_bar = page.page.evaluate(
        "() => Boolean(document.getElementById('plot').data[0].marker.colorbar)"
    )
    assert colour_bar
    page.page.locator("#plot").click(position={"x": 5, "y": 5})
    page.page.keyboard.press("2")
    second = payload["tasks"][1]["name"]
    assert page.page.get_attribute(f"[data-task='{second}']", "aria-pressed") == "true"
    assert page.errors == []


def test_the_comparison_and_task_pages_draw_every_map(browser, root, payload):
    pages = [("compare.html", len(payload["tasks"]))] + [
        (task_page_name(task["name"]), 1) for task in payload["tasks"]
    ]
    for path, maps in pages:
        opened = Page(browser, root)
        try:
            opened.open(path)
            assert opened.page.locator(".map-card .main-svg").count() >= maps
            assert opened.page.locator(".map-card").count() == maps
            assert opened.errors == [] and opened.foreign_requests() == []
        finally:
            opened.close()


def test_colour_by_a_property_shows_its_values_on_a_colour_bar(page, payload):
    page.open()
    values = payload["documents"]["properties"]["sentiment"]
    page.page.click("[data-colour='sentiment']")
    page.page.wait_for_function(
        "() => document.getElementById('plot').data[0].name === 'sentiment'"
    )
    drawn = page.page.evaluate("() => document.getElementById('plot').data[0].marker.color")
    assert drawn == values, "each post is coloured by its own score"
    assert page.page.locator(".colorbar").count() == 1
    assert "colour=sentiment" in page.page.url, "the colour mode is part of the link"
    headlines = page.page.locator("#headlines li").all_inner_texts()
    assert len(headlines) == 3 and all(
        "for default); shuffled" in line and line.endswith(" chance.") for line in headlines
    )
    assert page.errors == []


SIZES = {"desktop": (1400, 900), "laptop": (1024, 768), "phone": (390, 844)}


@pytest.mark.parametrize("size", list(SIZES))
def test_every_map_and_its_hover_labels_fit_its_panel(browser, site_dir, payload, size):
    """No plot wider than its card on first draw (no resize), at each size, and the hover
    label of a post at the left, the middle or the right of a map stays inside the map;
    screenshots of every page at that size are kept in test-artifacts/ for a person to look
    at."""
    width, height = SIZES[size]
    ARTIFACTS.mkdir(exist_ok=True)
    paths = ["index.html", "compare.html", task_page_name(payload["tasks"][1]["name"])]
    for path in paths:
        opened = Page(browser, site_dir.as_uri() + "/", viewport={"width": width, "height": height})
        try:
            opened.open(path)
            overflow = opened.page.evaluate(
                """() => [...document.querySelectorAll('.main-svg')].map((svg) => {
                  const panel = svg.closest('.map-card, .stage, main');
                  const box = panel.getBoundingClientRect();
                  const plot = svg.getBoundingClientRect();
                  return {plot: plot.width, panel: box.width,
                          out: plot.left < box.left - 1 || plot.right > box.right + 1};
                }).filter((found) => found.out)"""
            )
            assert overflow == [], f"{path} at {size}: plots overflow their panels: {overflow}"
            plot = ".js-plotly-plot"  # the page's first map
            opened.page.locator(plot).first.scroll_into_view_if_needed()
            box = opened.page.evaluate(RECT, plot)
            positions = opened.all_positions(plot)
            reached = opened.page.evaluate(  # on screen, under no legend, bar or other map
                """(at) => at.filter(([x, y]) => {
                  const found = document.elementFromPoint(x, y);
                  return found !== null && found.classList.contains('nsewdrag');
                })""",
                [at for at in positions if box["left"] < at[0] < box["right"]],
            )
            across = sorted(reached, key=lambda at: at[0])
            for share in (0.02, 0.5, 0.98):
                tooltip = hover_label(opened.page, across[round(share * (len(across) - 1))])
                left, right = tooltip["x"], tooltip["x"] + tooltip["width"]
                assert box["left"] - 1 <= left and right <= box["right"] + 1, (
                    f"{path} at {size}: a hover label runs out of its map: {tooltip}, {box}"
                )
                opened.page.mouse.move(0, 0)
            opened.page.screenshot(
                path=str(ARTIFACTS / f"{path.removesuffix('.html')}-{size}.png"), full_page=True
            )
        finally:
            opened.close()


OVERLAPS = """(selector) => {
  const boxes = [...document.querySelectorAll(selector)]
    .filter((element) => element.style.visibility !== 'hidden')
    .map((element) => element.getBoundingClientRect());
  const over = [];
  boxes.forEach((a, i) => boxes.slice(i + 1).forEach((b) => {
    if (a.left < b.right && b.left < a.right && a.top < b.bottom && b.top < a.bottom) over.push([i, a.x, a.y]);
  }));
  return {shown: boxes.length, over};
}"""
RECT = (
    "(selector) => { const r = document.querySelector(selector).getBoundingClientRect(); "
    "return {left: r.left, right: r.right, top: r.top, bottom: r.bottom}; }"
)


# Posts a pointer reaches (on screen, under no legend or bar), and those of them a cluster
# label is drawn across.
REACHED = """(at) => {
  const labels = [...document.querySelectorAll('#plot .textpoint text')]
    .filter((text) => text.style.visibility !== 'hidden')
    .map((text) => text.getBoundingClientRect());
  const clear = at.map(([x, y], doc) => [x, y, doc]).filter(([x, y]) => {
    const found = document.elementFromPoint(x, y);
    return found !== null && found.classList.contains('nsewdrag');
  });
  const labelled = clear.filter(([x, y]) => labels.some((box) =>
    x >= box.left && x <= box.right && y >= box.top && y <= box.bottom));
  return [clear.map(([x, y, doc]) => doc), labelled.map(([x, y, doc]) => doc)];
}"""


def hover_label(page, at: tuple[float, float]) -> dict:
    """The box of the hover label the pointer over ``at`` shows."""
    page.mouse.move(*at)
    label = page.locator(".hoverlayer .hovertext")
    label.wait_for(timeout=5_000)
    return label.bounding_box()


@pytest.mark.parametrize("size", list(SIZES))
def test_the_explorer_reads_at_every_size(browser, site_dir, payload, size):
    """At each size, on the real sample: the map fills most of the first screen (a phone's
    too), no cluster label lies over another, a hover label stays inside the page, Plotly's
    mode bar leaves the legend clear, a tapped post's panel opens in view, no text runs out
    of its box, and a table wider than its box says it scrolls."""
    width, height = SIZES[size]
    phone = size == "phone"
    opened = Page(
        browser,
        site_dir.as_uri() + "/",
        viewport={"width": width, "height": height},
        is_mobile=phone,
        has_touch=phone,
    )
    page = opened.page
    try:
        opened.open()
        plot = page.evaluate(RECT, "#plot .nsewdrag")
        assert plot["top"] < height / 2, f"the map starts in the first screen's top half: {plot}"
        assert min(plot["bottom"], height) - plot["top"] >= 0.45 * height, plot

        labels = page.evaluate(OVERLAPS, "#plot .textpoint text")
        assert labels["shown"] > 0 and labels["over"] == [], labels

        positions = opened.all_positions()
        page.mouse.move(*positions[0])  # the pointer over the map shows Plotly's mode bar
        page.locator("#plot .modebar").wait_for(timeout=5_000)
        clear, under_labels = page.evaluate(REACHED, positions)
        rightmost = max(clear, key=lambda doc: positions[doc][0])
        tooltip = hover_label(page, positions[rightmost])
        assert tooltip["x"] >= 0 and tooltip["x"] + tooltip["width"] <= width + 1, tooltip
        if not phone:  # the mode bar shows while the pointer is over the map
            bar = page.evaluate(RECT, "#plot .modebar")
            entry = page.evaluate(RECT, "#plot .legend .traces")
            apart = (
                bar["bottom"] <= entry["top"]
                or entry["bottom"] <= bar["top"]
                or bar["right"] <= entry["left"]
                or entry["right"] <= bar["left"]
            )
            assert apart, f"the mode bar {bar} covers the legend's first entry {entry}"
        page.mouse.move(1, height - 1)

        # A post a label is drawn across opens like any other (the label lights its cluster
        # as the pointer arrives, a redraw after which Plotly names no post on the click).
        # One a finger can tell apart: no other post drawn within a point's width of it.
        apart = [
            doc
            for doc in under_labels
            if all(
                math.dist(positions[doc], at) > 8
                for other, at in enumerate(positions)
                if other != doc
            )
        ]
        assert apart, "the real sample's maps have posts under their labels"
        doc = apart[0]
        at = opened.point_position(doc)
        if phone:
            page.touchscreen.tap(*at)
        else:  # as a person does: the pointer over the post (its label shows), then a click
            page.mouse.move(*at)
            page.locator(".hoverlayer .hovertext").wait_for(timeout=5_000)
            page.mouse.down()
            page.mouse.up()
        page.locator("#panel").wait_for(state="visible", timeout=5_000)
        assert page.inner_text("#doc-id") == payload["documents"]["id"][doc], "that post"
        panel = page.evaluate(RECT, "#panel")
        assert 0 <= panel["top"] < height - 100, f"the panel opens in view: {panel}"
        out = page.evaluate(
            """() => {
              const box = document.getElementById('panel').getBoundingClientRect();
              return [...document.querySelectorAll('#panel *')]
                .filter((e) => e.getBoundingClientRect().right > box.right + 1).length;
            }"""
        )
        assert out == 0, "nothing in the panel runs out of it"
        if not phone:  # the open panel narrows the map: a label beside any post stays whole
            positions = opened.all_positions()
            clear, _ = page.evaluate(REACHED, positions)
            box = page.evaluate(RECT, "#plot")
            middle = (box["left"] + box["right"]) / 2
            for doc in (
                max(clear, key=lambda doc: positions[doc][0]),
                min(clear, key=lambda doc: abs(positions[doc][0] - middle)),
            ):
                tooltip = hover_label(page, positions[doc])
                assert box["left"] - 1 <= tooltip["x"], (tooltip, box)
                assert tooltip["x"] + tooltip["width"] <= box["right"] + 1, (tooltip, box)
                page.mouse.move(1, height - 1)
        assert page.evaluate("() => document.documentElement.scrollWidth") <= width

        hints = page.evaluate(
            """() => [...document.querySelectorAll('.scrolls')].map((box) => ({
                overflows: box.scrollWidth > box.clientWidth + 1,
                said: !box.querySelector('.scroll-hint').hidden}))"""
        )
        assert hints and all(hint["overflows"] == hint["said"] for hint in hints), hints
        opened.page.screenshot(path=str(ARTIFACTS / f"explorer-tapped-{size}.png"))
        assert opened.errors == []
    finally:
        opened.close()


def test_a_phone_in_dark_mode_gets_a_fitting_dark_page(browser, site_dir):
    phone = Page(
        browser,
        site_dir.as_uri() + "/",
        viewport={"width": 390, "height": 844},
        color_scheme="dark",
        is_mobile=True,
    )
    try:
        phone.open()
        width = phone.page.evaluate("() => document.documentElement.scrollWidth")
        assert width <= 390, "nothing overflows sideways"
        background = phone.page.evaluate("() => getComputedStyle(document.body).backgroundColor")
        red, green, blue = (int(value) for value in re.findall(r"\d+", background)[:3])
        assert red + green + blue < 3 * 80, background
        assert phone.page.locator("#plot .main-svg").first.is_visible()
        width = phone.page.evaluate(
            "() => document.querySelector('#plot .nsewdrag').getBoundingClientRect().width"
        )
        assert width >= 0.8 * 390, f"the map gets the phone's width, not a corner: {width}px"
        legend_top = phone.page.evaluate(
            "() => document.querySelector('#plot .legend').getBoundingClientRect().top"
        )
        map_bottom = phone.page.evaluate(
            "() => document.querySelector('#plot .nsewdrag').getBoundingClientRect().bottom"
        )
        assert legend_top >= map_bottom - 1, "the legend sits below the map"

        # A selection panel full of long post previews must not widen the page either.
        some = ",".join(phone.page.evaluate("() => QWEN_SITE_DATA.documents.id.slice(0, 40)"))
        phone.page.goto("about:blank")
        phone.open("index.html#sel=" + some)
        assert phone.page.locator("#selection").is_visible()
        width = phone.page.evaluate("() => document.documentElement.scrollWidth")
        assert width <= 390, f"a selection makes the page {width}px wide"
    finally:
        phone.close()


@pytest.fixture(scope="session")
def large_site_dir(built, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The built site in the form a large corpus gets: previews up front, full texts in
    chunk files loaded on demand, WebGL points."""
    copy = tmp_path_factory.mktemp("large-site") / "site"
    shutil.copytree(built.root / "site", copy)
    payload = read_payload(copy)
    texts = payload["documents"].pop("text")
    payload["documents"]["preview"] = [text[:80] for text in texts]
    payload["texts"] = {"chunk_size": 300, "chunks": 3}
    payload["render"]["webgl_above"] = 100
    write_payload(payload, copy, texts)
    write_pages(copy, [task["name"] for task in payload["tasks"]], webgl=True)  # as site_pages
    return copy


@pytest.fixture(scope="session")
def many_labels_site_dir(built, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The built site as a corpus of 45 labels of very different sizes would give it."""
    copy = tmp_path_factory.mktemp("many-labels") / "site"
    shutil.copytree(built.root / "site", copy)
    payload = read_payload(copy)
    count = len(payload["documents"]["id"])
    # Label k holds 0.9 times as many posts as label k - 1, and at least 3: 81 down to 3.
    weights = 0.9 ** np.arange(45)
    sizes = np.maximum(3, np.round(count * weights / weights.sum())).astype(int)
    sizes[0] += count - sizes.sum()
    labels = np.random.default_rng(0).permutation(np.repeat(np.arange(45), sizes))
    payload["categories"] = [f"label {number:02d}" for number in range(45)]
    payload["documents"]["category"] = labels.tolist()
    texts = payload["documents"]["text"]
    write_payload(payload, copy, texts)
    write_pages(copy, [task["name"] for task in payload["tasks"]])
    return copy


def test_many_labels_list_the_largest_and_group_the_rest(browser, many_labels_site_dir):
    """45 labels: the map's legend lists the 19 largest, each its own colour, and one grey
    group of the other 26; the comparison page's legend says the same."""
    payload = read_payload(many_labels_site_dir)
    counts = np.bincount(payload["documents"]["category"], minlength=45)
    largest = {payload["categories"][c] for c in np.argsort(-counts, kind="stable")[:19]}
    opened = Page(
        browser, many_labels_site_dir.as_uri() + "/", viewport={"width": 1280, "height": 900}
    )
    try:
        opened.open()
        traces = opened.page.evaluate(
            "() => document.getElementById('plot').data"
            ".filter((trace) => trace.showlegend !== false)"
            ".map((trace) => [trace.name, trace.marker.color, trace.customdata.length])"
        )
        names = [name for name, _, _ in traces]
        assert len(traces) == 20 and set(names[:19]) == largest
        assert names[19] == "other 26 labels"
        colours = [colour for _, colour, _ in traces]
        assert len(set(colours)) == 20, "every group its own colour"
        assert sum(size for _, _, size in traces) == len(payload["documents"]["id"])
        shown = opened.page.locator("#plot .legend .traces").count()
        assert shown == 20, "the drawn legend lists as many"
        opened.open("compare.html")
        legend = opened.page.locator("#legend > span").all_inner_texts()
        assert [text.strip() for text in legend] == names
        assert opened.errors == []
    finally:
        opened.context.close()


def test_a_large_site_loads_texts_on_demand_and_draws_with_webgl(browser, large_site_dir, payload):
    assert sorted(path.name for path in (large_site_dir / "texts").iterdir()) == [
        f"{number:04d}.{kind}" for number in range(3) for kind in ("js", "json")
    ]
    opened = Page(browser, large_site_dir.as_uri() + "/", viewport={"width": 1280, "height": 900})
    try:
        doc = 650  # in the third chunk
        opened.open(f"index.html#doc={payload['documents']['id'][doc]}")
        assert (
            opened.page.evaluate("() => document.getElementById('plot').data[0].type")
            == "scattergl"
        )
        text = payload["documents"]["text"][doc]
        opened.page.wait_for_function(
            "(expected) => document.getElementById('doc-text').textContent === expected",
            arg=text,
        )
        assert any(url.endswith("texts/0002.js") for url in opened.requests)
        assert not any(url.endswith("texts/0000.js") for url in opened.requests), (
            "only the chunk needed"
        )
        opened.page.fill("#search", "space")
        expected = sum("space" in text.lower() for text in payload["documents"]["text"])
        opened.page.wait_for_function(
            "() => /match$/.test(document.getElementById('search-count').textContent)"
        )
        assert opened.page.inner_text("#search-count").startswith(f"{expected} of ")
        assert opened.errors == [] and opened.foreign_requests() == []
    finally:
        opened.close()


def test_a_smaller_rebuild_removes_the_text_chunks_of_a_larger_one(large_site_dir, tmp_path: Path):
    site = tmp_path / "site"
    shutil.copytree(large_site_dir, site)
    payload = read_payload(site)
    texts = [
        text
        for chunk in range(3)
        for text in json.loads((site / f"texts/{chunk:04d}.json").read_text())
    ]
    assert len(texts) == len(payload["documents"]["id"])
    payload["documents"]["text"] = texts
    del payload["documents"]["preview"]
    payload["texts"] = None
    write_payload(payload, site)
    assert list((site / "texts").iterdir()) == []
    assert read_payload(site)["documents"]["text"] == texts
    script = (site / "data.js").read_text()
    assert script.startswith("window.QWEN_SITE_DATA = ") and "</script" not in script.lower()


def test_switching_tasks_moves_the_points_smoothly(page, payload):
    page.open()
    point = "() => document.querySelector('.scatterlayer .trace .point').getAttribute('transform')"
    before = page.page.evaluate(point)
    # Every place that point is drawn at, frame by frame, until it rests (a point redrawn
    # without a transition is a new element: its old one then records nothing).
    drawn = page.page.evaluate_handle(
        """() => {
          const point = document.querySelector('.scatterlayer .trace .point');
          const seen = [];
          new MutationObserver(() => seen.push(point.getAttribute('transform')))
            .observe(point, { attributes: true, attributeFilter: ['transform'] });
          return seen;
        }"""
    )
    page.after_redraw(
        lambda: page.page.click(f"#task-buttons [data-task='{payload['tasks'][1]['name']}']")
    )
    after = page.page.evaluate(point)
    assert before != after
    on_its_way = set(drawn.json_value()) - {before, after}
    assert on_its_way, "the point jumped: nothing was drawn between its two places"


def jaccard(mine: list[int], theirs: list[int]) -> float:
    shared = len(set(mine) & set(theirs))
    return shared / (len(mine) + len(theirs) - shared)


def inside(
    at: tuple[float, float], start: tuple[float, float], end: tuple[float, float], margin=0.0
) -> bool:
    (x, y), (x0, y0), (x1, y1) = at, start, end
    return (
        min(x0, x1) + margin < x < max(x0, x1) - margin
        and min(y0, y1) + margin < y < max(y0, y1) - margin
    )


def in_box(positions, start, end, selected: set[int]) -> None:
    """``selected`` is what a box from ``start`` to ``end`` holds: every post clearly inside,
    none clearly outside (a post within 2 px of the edge may go either way)."""
    clearly_in = {doc for doc, at in enumerate(positions) if inside(at, start, end, 2)}
    maybe = {doc for doc, at in enumerate(positions) if inside(at, start, end, -2)}
    assert clearly_in <= selected <= maybe
    assert 0 < len(selected) < len(positions), "the box holds some posts, not all"


def test_every_map_has_cluster_labels_and_hovering_one_lights_its_cluster(page, payload):
    page.open()
    task = payload["tasks"][0]
    labels = task["clusters"]["labels"]
    assert labels, "the map has labelled clusters"
    drawn = page.page.evaluate(
        "() => document.getElementById('plot').data.find((t) => t.name === 'labels').text"
    )
    assert sorted(drawn) == sorted(label["label"] for label in labels)

    biggest = max(range(len(labels)), key=lambda i: labels[i]["size"])
    page.page.mouse.move(*page.label_position(drawn.index(labels[biggest]["label"])))
    members = task["clusters"]["member"]
    number = labels[biggest]["number"]
    page.page.wait_for_function(
        "() => document.getElementById('plot').data.some("
        "(t) => t.meta === 'documents' && Array.isArray(t.marker.opacity))"
    )
    lit = {doc for doc, opacity in page.opacities().items() if opacity == 1}
    assert lit == {doc for doc, member in enumerate(members) if member == number}
    assert len(lit) == labels[biggest]["size"]

    page.page.mouse.move(5, 5)
    page.page.wait_for_function(
        "() => !document.getElementById('plot').data.some("
        "(t) => t.meta === 'documents' && Array.isArray(t.marker.opacity))"
    )
    page.page.click("#labels-toggle")
    assert "labels=off" in page.page.url
    visible = page.page.evaluate(
        "() => document.getElementById('plot').data.find((t) => t.name === 'labels').visible"
    )
    assert visible is False
    assert page.errors == []


def box_around(positions, plot_box, wanted=(20, 150)) -> tuple[tuple[float, float], ...]:
    """A box, centred on the post nearest the middle of the plot, that holds between
    ``wanted`` posts with a margin to spare: the selection is then kept in the link."""
    middle = (plot_box["x"] + plot_box["width"] / 2, plot_box["y"] + plot_box["height"] / 2)
    centre = min(positions, key=lambda at: (at[0] - middle[0]) ** 2 + (at[1] - middle[1]) ** 2)
    for half in range(8, 400, 4):
        start, end = (centre[0] - half, centre[1] - half), (centre[0] + half, centre[1] + half)
        held = sum(inside(at, start, end, -2) for at in positions)
        if held >= wanted[0]:
            assert held <= wanted[1], f"no box holds {wanted} posts"
            return start, end
    raise AssertionError("no box around the middle holds enough posts")


def selection_in_link(url: str) -> set[str] | None:
    """The ids a page's link keeps as its selection (the hash is a query string)."""
    values = parse_qs(urlparse(url).fragment).get("sel")
    return set(values[0].split(",")) if values else None


def test_a_box_selection_is_listed_followed_across_tasks_linked_and_exported(
    browser, site_dir, payload, tmp_path
):
    opened = Page(browser, site_dir.as_uri() + "/", viewport={"width": 1400, "height": 900})
    try:
        page = opened.page
        opened.open()
        page.click("[data-drag='select']")
        ids = payload["documents"]["id"]

        # Most of the map: too many posts for the link, which says so.
        box = page.locator("#plot").bounding_box()
        opened.drag(
            (box["x"] + box["width"] * 0.1, box["y"] + box["height"] * 0.1),
            (box["x"] + box["width"] * 0.9, box["y"] + box["height"] * 0.9),
        )
        page.locator("#selection").wait_for(state="visible")
        assert int(page.inner_text("#selection-count").split()[0]) > 200
        assert selection_in_link(page.url) is None
        assert "too many" in page.inner_text("#selection-note")

        positions = opened.all_positions()
        start, end = box_around(positions, box)
        opened.drag(start, end)
        page.wait_for_function(
            "() => parseInt(document.getElementById('selection-count').textContent) <= 200"
        )
        expected = {doc for doc, opacity in opened.opacities().items() if opacity == 1}
        in_box(positions, start, end, expected)
        count = int(page.inner_text("#selection-count").split()[0])
        assert count == len(expected)
        assert selection_in_link(page.url) == {ids[doc] for doc in expected}
        assert "kept in the link" in page.inner_text("#selection-note")

        # The link, opened anew, restores the same selection.
        link = page.url
        again = Page(browser, site_dir.as_uri() + "/", viewport={"width": 1400, "height": 900})
        try:
            again.page.goto(link)
            again.page.wait_for_selector("body[data-details='loaded']", timeout=30_000)
            restored = {doc for doc, opacity in again.opacities().items() if opacity == 1}
            assert restored == expected
            assert again.page.inner_text("#selection-count") == page.inner_text("#selection-count")
            assert again.errors == []
        finally:
            again.close()

        groups = page.locator("#selection-groups li")
        per_group = {
            item.get_attribute("data-category"): int(item.inner_text().split()[-2])
            for item in groups.all()
        }
        categories = [
            payload["categories"][payload["documents"]["category"][doc]] for doc in expected
        ]
        assert per_group == {name: categories.count(name) for name in set(categories)}
        ARTIFACTS.mkdir(exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / "explorer-selection-laptop.png"))

        # The same posts stay lit on another task's map.
        second = payload["tasks"][1]["name"]
        opened.after_redraw(lambda: page.click(f"#task-buttons [data-task='{second}']"))
        lit = {doc for doc, opacity in opened.opacities().items() if opacity == 1}
        assert lit == expected

        # Exports: every selected post, as CSV and as JSON.
        with page.expect_download() as download:
            page.click("#export-json")
        rows = json.loads(Path(download.value.path()).read_text())
        assert {row["doc_id"] for row in rows} == {ids[doc] for doc in expected}
        assert {row["task"] for row in rows} == {second}
        with page.expect_download() as download:
            page.click("#export-csv")
        table = list(csv.DictReader(io.StringIO(Path(download.value.path()).read_text())))
        assert [row["doc_id"] for row in table] == [row["doc_id"] for row in rows]
        # CSV keeps each text whole; one a spreadsheet would read as a formula is quoted.
        assert [row["text"] for row in table] == [
            "'" + row["text"]
            if row["text"][:1] in ("=", "+", "-", "@", "\t", "\r")
            else row["text"]
            for row in rows
        ]
        assert opened.errors == []
    finally:
        opened.close()


def test_an_exported_post_never_becomes_a_spreadsheet_formula(browser, site_dir, payload):
    opened = Page(browser, site_dir.as_uri() + "/")
    try:
        formula_id = payload["documents"]["id"][1]
        opened.open(f"index.html#sel={formula_id}")
        assert opened.page.inner_text("#selection-count") == "1 post selected"
        with opened.page.expect_download() as download:
            opened.page.click("#export-csv")
        (row,) = csv.DictReader(io.StringIO(Path(download.value.path()).read_text()))
        assert row["doc_id"] == formula_id
        assert row["text"] == "'" + payload["documents"]["text"][1], "kept, but as text"
    finally:
        opened.close()


def test_what_moved_most_lists_the_posts_that_kept_fewest_neighbours(page, payload):
    reference = next(t for t in payload["tasks"] if t["name"] == payload["reference_task"])
    other = next(t for t in payload["tasks"] if t["name"] != payload["reference_task"])
    page.open(f"index.html#task={other['name']}")
    listed = page.page.locator("#moved button").evaluate_all(
        "(buttons) => buttons.map((b) => b.dataset.doc)"
    )
    index = {doc_id: i for i, doc_id in enumerate(payload["documents"]["id"])}
    kept = [
        jaccard(mine, theirs)
        for mine, theirs in zip(other["neighbours"], reference["neighbours"], strict=True)
    ]
    assert len(listed) == 15
    worst_listed = max(kept[index[doc_id]] for doc_id in listed)
    best_unlisted = min(
        k for doc, k in enumerate(kept) if payload["documents"]["id"][doc] not in listed
    )
    assert worst_listed <= best_unlisted, "no post left out kept fewer neighbours"

    page.page.locator("#moved button").first.click()
    assert page.page.inner_text("#doc-id") == listed[0]

    page.page.click(f"#task-buttons [data-task='{reference['name']}']")
    assert page.page.locator("#moved button").count() == 0, "nothing moves against itself"
    assert page.errors == []


def test_the_comparison_maps_are_linked_by_hover_and_selection(browser, site_dir, payload):
    opened = Page(browser, site_dir.as_uri() + "/", viewport={"width": 1920, "height": 1080})
    try:
        page = opened.page
        opened.open("compare.html")
        plots = [f".map-card[data-task='{task['name']}'] .plot" for task in payload["tasks"]]
        mouse = opened.point_position(11, plots[0])
        page.mouse.move(*mouse)
        page.wait_for_function(
            "(s) => document.querySelector(s).data.at(-1).x.length === 1", arg=plots[-1]
        )
        rings = [
            page.evaluate("(s) => document.querySelector(s).data.at(-1)", selector)
            for selector in plots
        ]
        assert rings[0]["x"] == [], "the hovered map shows its own hover label instead"
        doc = rings[1]["customdata"][0]
        hovered_at = opened.point_position(doc, plots[0])
        assert abs(hovered_at[0] - mouse[0]) + abs(hovered_at[1] - mouse[1]) < 20
        for ring, task in zip(rings[1:], payload["tasks"][1:], strict=True):
            assert (ring["x"], ring["y"]) == ([task["x"][doc]], [task["y"][doc]]), (
                "the same post is ringed in every other map"
            )
        first = page.locator(plots[0])
        first.hover()
        first.locator(".modebar-btn[data-val='select']").click()
        box = first.bounding_box()
        start = (box["x"] + box["width"] * 0.3, box["y"] + box["height"] * 0.3)
        end = (box["x"] + box["width"] * 0.7, box["y"] + box["height"] * 0.7)
        positions = opened.all_positions(plots[0])
        opened.drag(start, end)
        page.wait_for_function(
            "(s) => document.querySelector(s).data.some("
            "(t) => t.meta === 'documents' && Array.isArray(t.marker.opacity))",
            arg=plots[-1],
        )
        expected = {d for d, opacity in opened.opacities(plots[0]).items() if opacity == 1}
        in_box(positions, start, end, expected)
        for selector in plots:
            lit = {d for d, opacity in opened.opacities(selector).items() if opacity == 1}
            assert lit == expected, "the same posts are lit in every map"
        assert page.inner_text("#linked-status").startswith(f"{len(expected)} posts selected")
        page.click("#linked-clear")
        assert all(set(opened.opacities(selector).values()) == {0.85} for selector in plots), (
            "clearing lights every post again"
        )
        assert opened.errors == []
    finally:
        opened.close()


def bundle_header(path: Path) -> str:
    with path.open(encoding="utf-8") as file:
        return "".join(file.readline() for _ in range(3))


def test_a_small_site_gets_the_basic_bundle_and_a_large_one_gl2d_of_one_version(
    site_dir, large_site_dir
):
    small = bundle_header(site_dir / "vendor" / "plotly.min.js")
    large = bundle_header(large_site_dir / "vendor" / "plotly.min.js")
    assert "(basic - minified)" in small, "an SVG-only site loads the small bundle"
    assert "(gl2d - minified)" in large, "a WebGL site loads the bundle with scattergl only"
    version = re.compile(r"v(\d+\.\d+\.\d+)")
    assert version.search(small).group(1) == version.search(large).group(1), (
        "the vendored bundles are one plotly.js version: update both in site_sources/vendor/"
    )


@pytest.fixture(scope="session")
def variants_site(variants_built) -> Path:
    return variants_built.root / "site"


def test_the_explorer_switches_variants_as_it_switches_tasks(browser, variants_site):
    payload = read_payload(variants_site)
    variants = [variant["name"] for variant in payload["variants"]]
    page = Page(browser, variants_site.as_uri() + "/", viewport={"width": 1400, "height": 900})
    try:
        page.open()
        assert page.page.locator("#variant-buttons button").all_inner_texts() == variants
        tasks = page.page.locator("#task-buttons button").all_inner_texts()
        assert tasks == list(dict.fromkeys(task["name"] for task in payload["tasks"]))
        drawn = page.all_positions()
        page.after_redraw(
            lambda: page.page.click(f"#variant-buttons [data-variant='{variants[1]}']")
        )
        assert f"variant={variants[1]}" in page.page.url
        moved = page.all_positions()
        assert moved != drawn, "the other variant's map is drawn"
        # The maps are aligned onto one reference: a post stays near where it was.
        shift = np.median(np.linalg.norm(np.subtract(moved, drawn), axis=1))
        spread = np.linalg.norm(np.std(drawn, axis=0))
        assert shift < spread, "aligned maps: the variant moves posts less than the map is wide"
        assert "Variant " + variants[1] in page.page.inner_text("#variant-text")
        rows = page.page.locator("#quality-rows tr:not([hidden])")
        assert rows.count() == len(tasks), "the quality table shows the variant's tasks"
        cells = page.page.locator("#variant-rows td")
        assert cells.count() == len(variants) * len(tasks)
        best = page.page.locator("#variant-rows button.best")
        assert best.count() >= len(tasks), "each task's best variant is marked"
        # A cell switches the map, and the link restores it.
        page.after_redraw(
            lambda: page.page.click(
                f"#variant-rows td[data-variant='{variants[0]}'][data-task='topic'] button"
            )
        )
        assert page.page.url.endswith(f"task=topic&variant={variants[0]}")
        page.open(f"index.html#task=topic&variant={variants[1]}")
        assert page.page.inner_text("#task-name") == f"{variants[1]} · topic:"
        assert page.errors == []
    finally:
        page.close()


@pytest.mark.parametrize("size", ["laptop", "phone"])
def test_the_variant_pages_fit_and_the_comparison_shows_a_row_or_a_column(
    browser, variants_site, size
):
    payload = read_payload(variants_site)
    variants = [variant["name"] for variant in payload["variants"]]
    tasks = list(dict.fromkeys(task["name"] for task in payload["tasks"]))
    width, height = SIZES[size]
    ARTIFACTS.mkdir(exist_ok=True)
    views = {
        "index.html": None,
        "compare.html": [f"{variants[0]} · {task}" for task in tasks],
        "compare.html#task=topic": [f"{variant} · topic" for variant in variants],
        f"compare.html#variant={variants[1]}": [f"{variants[1]} · {task}" for task in tasks],
        task_page_name("sentiment"): [f"{variant} · sentiment" for variant in variants],
    }
    for path, titles in views.items():
        opened = Page(
            browser, variants_site.as_uri() + "/", viewport={"width": width, "height": height}
        )
        try:
            opened.open(path)
            if titles is not None:
                assert opened.page.locator(".map-card h2").all_inner_texts() == titles, path
            overflow = opened.page.evaluate(
                """() => [...document.querySelectorAll('.main-svg')].filter((svg) => {
                  const box = svg.closest('.map-card, .stage, main').getBoundingClientRect();
                  const plot = svg.getBoundingClientRect();
                  return plot.left < box.left - 1 || plot.right > box.right + 1;
                }).length"""
            )
            assert overflow == 0, f"{path} at {size}: a plot is wider than its panel"
            name = re.sub(r"[^a-z0-9]+", "-", path.removesuffix(".html").replace(".html", ""))
            opened.page.screenshot(
                path=str(ARTIFACTS / f"variants-{name}-{size}.png"), full_page=True
            )
            assert opened.errors == [], path
        finally:
            opened.close()


def test_the_comparison_picker_switches_views_and_keeps_the_selection_lit(browser, variants_site):
    page = Page(browser, variants_site.as_uri() + "/", viewport={"width": 1400, "height": 900})
    try:
        page.open("compare.html")
        plot = ".map-card:nth-child(1) .plot"
        first = page.all_positions(plot)
        xs, ys = zip(*first, strict=True)
        middle = (np.median(xs), np.median(ys))
        page.page.evaluate(
            "(plot) => Plotly.relayout(document.querySelector(plot), {dragmode: 'select'})", plot
        )
        page.drag((middle[0] - 60, middle[1] - 60), (middle[0] + 60, middle[1] + 60))
        page.page.wait_for_function(
            "() => document.getElementById('linked-status').textContent.includes('selected')"
        )
        lit = {doc for doc, value in page.opacities(plot).items() if value > 0.5}
        assert 0 < len(lit) < len(first)
        page.after_redraw(lambda: page.page.select_option("#compare-view", "task=topic"), "#maps")
        assert page.page.locator(".map-card").count() == 2
        for card in (1, 2):
            now = {
                doc
                for doc, value in page.opacities(f".map-card:nth-child({card}) .plot").items()
                if value > 0.5
            }
            assert now == lit, "the selection stays lit in the new view's maps"
        assert page.page.url.endswith("#task=topic")
        assert page.errors == []
    finally:
        page.close()

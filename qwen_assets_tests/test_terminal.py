"""`qwen-assets build` as a person sees it in a terminal: a real pseudo-terminal (100 x 40),
and what it received played through a terminal emulator (pyte)."""

from __future__ import annotations

import os
import sys

import pexpect
import pyte

from qwen_assets.testing import write_settings
from qwen_assets_tests.conftest import Project

COLUMNS, ROWS = 100, 40
BAR = "━"  # what rich draws its bars with
TASKS = ["default", "topic", "sentiment", "toxicity"]


def in_a_terminal(project: Project, environ: dict[str, str] | None = None) -> tuple[int, str, str]:
    """Runs a build in a pseudo-terminal: its exit code, the bytes it wrote (decoded), and
    every line the terminal showed, scrolled off or still on screen."""
    env = {
        **os.environ,
        **(environ or {}),
        "QWEN_ASSETS_SETTINGS": str(project.settings_path),
        "DAGSTER_HOME": str(project.home),
        "TERM": "xterm-256color",
    }
    child = pexpect.spawn(
        sys.executable,
        ["-m", "qwen_assets.cli", "build"],
        env=env,
        dimensions=(ROWS, COLUMNS),
        timeout=300,
    )
    written = child.read()
    child.close()
    screen = pyte.HistoryScreen(COLUMNS, ROWS, history=10_000)
    screen.set_mode(pyte.modes.LNM)
    pyte.ByteStream(screen).feed(written)
    scrolled = ["".join(line[x].data for x in range(COLUMNS)) for line in screen.history.top]
    shown = [line.rstrip() for line in scrolled + screen.display]
    return child.exitstatus, written.decode(errors="replace"), "\n".join(shown).strip()


def test_four_tasks_embedding_leave_one_clean_line_each_and_no_bar_behind(project_copy, server):
    """Each task's bar lives while it embeds and gives way to one line; nothing is glued onto
    a bar, no finished bar is copied or drawn again under later lines, and a failure's line
    still reaches the terminal after the bars."""

    def edit(raw: dict) -> None:
        for task in TASKS:
            raw["tasks"][task]["instruction"] += " Answer briefly."

    project = project_copy(edit)
    server.reset()
    server.latency = lambda: 0.3  # a few requests a task: long enough for the bars to draw
    try:
        code, written, seen = in_a_terminal(project)
    finally:
        server.latency = None
    assert code == 0, seen
    assert written.count(BAR) > 0, "the bars were drawn while the tasks embedded"
    lines = seen.splitlines()
    assert not [line for line in lines if BAR in line], "no bar is left behind or copied"
    for task in TASKS:
        started = [line for line in lines if line.startswith(f"  embedding {task}: ")]
        finished = [line for line in lines if line.startswith(f"  embedded {task}: ")]
        assert len(started) == 1 and len(finished) == 1, seen
        assert lines.index(started[0]) < lines.index(finished[0])
    (closing,) = [line for line in lines if line.startswith("built ")]
    assert lines.index(closing) > lines.index(finished[0]), "the last line says what was built"

    # A refused key: the build ends with its one failure line, after a bar that never moved.
    project.raw["tasks"]["topic"]["instruction"] += " Once more."
    write_settings(project.settings_path, project.raw)
    server.api_key = "sk-the-right-key"
    try:
        code, _, seen = in_a_terminal(project, {"SILICONFLOW_API_KEY": "sk-a-wrong-key"})
    finally:
        server.api_key = None
    assert code == 1
    assert not [line for line in seen.splitlines() if BAR in line], seen
    *_, closing = seen.split("\nqwen-assets: ")  # the last line: it may wrap
    assert "refused the API key" in closing and "  embedding " not in closing, seen

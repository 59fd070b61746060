"""The ``qwen-assets`` command line.

argparse (the standard library) parses the commands: the CLI needs subcommands, help and
exit codes, nothing a dependency would add. Every user error is one line on stderr and
exit code 2.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path

from qwen_assets.settings import SettingsError

USER_ERROR = 2
DEFAULT_DAGSTER_HOME = ".dagster"


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
    from qwen_assets.pipeline import build_stale

    with dagster_instance() as instance:
        report = build_stale(instance, dry_run=arguments.dry_run, log=print)
    return 0 if report.succeeded else 1


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
    from qwen_assets.storage import StorageError

    return (CorpusError, EmbeddingError, StorageError)


if __name__ == "__main__":
    raise SystemExit(main())

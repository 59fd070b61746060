"""The Dagster members this project uses that Dagster does not mark public, in one place.

Each is used because no public call does the same in Dagster 1.13, and each says why. A
Dagster upgrade that removes or renames one breaks here, and
``qwen_assets_tests/test_definitions.py`` names the member that went missing.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from dagster import DagsterEventType, DagsterInstance, DagsterRun, EventLogRecord

# Tags Dagster writes and reads whose names it does not export: on every materialization of
# a versioned asset (see Dagster's guide to asset versioning), and on a run that
# materializes a range of partitions (a single-run backfill, the one way to give one run
# several partitions from outside a backfill).
CODE_VERSION_TAG = "dagster/code_version"
DATA_VERSION_TAG = "dagster/data_version"
PARTITION_RANGE_START_TAG = "dagster/asset_partition_range_start"
PARTITION_RANGE_END_TAG = "dagster/asset_partition_range_end"
TAGS = [CODE_VERSION_TAG, DATA_VERSION_TAG, PARTITION_RANGE_START_TAG, PARTITION_RANGE_END_TAG]

# (owner, member) for each one used below: what the test checks is still there.
MEMBERS = [
    (DagsterInstance, "add_run_tags"),
    (DagsterInstance, "report_run_failed"),
    (DagsterInstance, "report_run_canceled"),
    (DagsterInstance, "get_records_for_run"),
    (DagsterInstance, "root_directory"),
    (DagsterInstance, "event_log_storage"),
]


def tag_run(instance: DagsterInstance, run_id: str, tags: Mapping[str, str]) -> None:
    """Add tags to a run that is already going. Run tags are otherwise only set when a run is
    created; the run's own worker is the one process that knows who runs it."""
    instance.add_run_tags(run_id, tags)


def fail_run(instance: DagsterInstance, run: DagsterRun, message: str) -> None:
    """End a run whose process died: the run launcher of a local instance cannot tell that it
    died, so nothing else ever ends it."""
    instance.report_run_failed(run, message=message)


def cancel_run(instance: DagsterInstance, run: DagsterRun, message: str) -> None:
    """End a run that an interrupt stopped before Dagster could end it itself."""
    instance.report_run_canceled(run, message=message)


def free_pool_slots(instance: DagsterInstance, run_id: str) -> None:
    """Give back the pool slots of a run that ended without giving them back (its process was
    killed). Run monitoring does the same only after ``free_slots_after_run_end_seconds``, and
    only in the daemon."""
    storage = instance.event_log_storage
    if storage.supports_global_concurrency_limits:
        storage.free_concurrency_slots_for_run(run_id)


def run_log(
    instance: DagsterInstance, run_id: str, of_type: set[DagsterEventType] | None = None
) -> list[EventLogRecord]:
    """Every record of one run, in order (the step lines and the log file of a headless build).
    The public record calls select by asset or by run status, not by run."""
    return list(instance.get_records_for_run(run_id, of_type=of_type).records)


def instance_folder(instance: DagsterInstance) -> Path:
    """Where the instance keeps its files: the build's lock and log files go beside them."""
    return Path(instance.root_directory)

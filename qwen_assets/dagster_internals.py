"""Everything this project uses of Dagster that Dagster does not mark public, in one place:
members, the tag names Dagster writes, and the class names of errors it records.

Each is used because no public call does the same in Dagster 1.13, and each says why. No
other module of the project touches them (a test reads every module for the names below).
A Dagster upgrade that removes or renames one fails ``qwen_assets_tests/test_definitions.py``,
which names what went missing.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from dagster import (
    AssetCheckEvaluation,
    AssetKey,
    AssetsDefinition,
    DagsterEvent,
    DagsterEventType,
    DagsterInstance,
    DagsterRun,
    Definitions,
    EventLogRecord,
    ExecuteInProcessResult,
    JobDefinition,
    PartitionKeyRange,
    PartitionsDefinition,
)

# Tags Dagster writes and reads whose names it does not export: on every materialization of
# a versioned asset (see Dagster's guide to asset versioning), and on a run that
# materializes a range of partitions (a single-run backfill, the one way to give one run
# several partitions from outside a backfill).
CODE_VERSION_TAG = "dagster/code_version"
DATA_VERSION_TAG = "dagster/data_version"
PARTITION_RANGE_START_TAG = "dagster/asset_partition_range_start"
PARTITION_RANGE_END_TAG = "dagster/asset_partition_range_end"
TAGS = [CODE_VERSION_TAG, DATA_VERSION_TAG, PARTITION_RANGE_START_TAG, PARTITION_RANGE_END_TAG]

# The class names of errors Dagster records on a failed step (it records a class by name
# only): an interrupted step (Ctrl-C, SIGTERM), and a step stopped by a blocking check.
INTERRUPTED_ERROR = "DagsterExecutionInterruptedError"
CHECK_FAILED_ERROR = "DagsterAssetCheckFailedError"
ERROR_CLASS_NAMES = [INTERRUPTED_ERROR, CHECK_FAILED_ERROR]

# (owner, member) for each one used below: what the test checks is still there.
MEMBERS = [
    (DagsterInstance, "add_run_tags"),
    (DagsterInstance, "report_run_failed"),
    (DagsterInstance, "report_run_canceled"),
    (DagsterInstance, "get_records_for_run"),
    (DagsterInstance, "root_directory"),
    (DagsterInstance, "event_log_storage"),
    (Definitions, "resolve_assets_def"),
    (Definitions, "resolve_job_def"),
    (AssetsDefinition, "is_materializable"),
    (PartitionsDefinition, "get_partition_keys_in_range"),
    (PartitionsDefinition, "subset_with_partition_keys"),
    (DagsterEvent, "step_failure_data"),
    (ExecuteInProcessResult, "get_asset_check_evaluations"),
]
# Members of the instance's event log storage (its class is not exported).
STORAGE_MEMBERS = ["supports_global_concurrency_limits", "free_concurrency_slots_for_run"]


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


def assets_def_of(defs: Definitions, key: AssetKey) -> AssetsDefinition:
    """The definition that computes ``key``: whether it is materializable (not an observable
    source) and which keys it computes together. The public ``resolve_all_asset_specs``
    says neither."""
    return defs.resolve_assets_def(key)


def materializable(assets_def: AssetsDefinition) -> bool:
    return assets_def.is_materializable


def job_of(defs: Definitions, name: str) -> JobDefinition:
    """The job to execute in process; ``Definitions.get_job_def`` is deprecated for it."""
    return defs.resolve_job_def(name)


def partition_keys_between(
    partitions_def: PartitionsDefinition, first: str, last: str
) -> list[str]:
    """The partition keys from ``first`` to ``last``: what one range-tagged run builds."""
    keys = partitions_def.get_partition_keys_in_range(PartitionKeyRange(first, last))
    return [str(key) for key in keys]


def partitions_subset(partitions_def: PartitionsDefinition, keys: list[str]):
    """A subset of partitions, as a partition mapping takes it (no public constructor)."""
    return partitions_def.subset_with_partition_keys(keys)


def step_error(event: DagsterEvent):
    """The error a failed step recorded (class name, message, cause), or None: the public
    record of a step failure says only that it failed."""
    data = event.step_failure_data
    return data.error if data is not None else None


def check_evaluations(result: ExecuteInProcessResult) -> list[AssetCheckEvaluation]:
    """What each asset check of a run found: a blocking check that failed says why here."""
    return list(result.get_asset_check_evaluations())

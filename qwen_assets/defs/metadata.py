"""What the assets show in the UI: metadata and check results, the same way everywhere."""

from __future__ import annotations

import hashlib

import numpy as np
import pandas as pd
from dagster import AssetCheckResult, DataVersion, MetadataValue

from qwen_assets.settings import fingerprint

# What assets record for the stale rule (qwen_assets.orchestration.stale) to read.
# A partition of a multi-partition run: a hash of its own rows, its data version (Dagster's
# data version is one per run and step, not per partition).
PARTITION_VERSION_METADATA = "partition_data_version"
# An asset built from an observed source: that source's version it used.
SOURCE_VERSION_METADATA = "source_version"
# A partition whose blocking check failed: what the check found.
FAILED_CHECK_METADATA = "blocking_check_failed"


def preview_markdown(frame: pd.DataFrame, rows: int = 5, width: int = 80) -> MetadataValue:
    shown = frame.head(rows).copy()
    for column in shown.columns:
        if shown[column].dtype == object or pd.api.types.is_string_dtype(shown[column]):
            shown[column] = shown[column].astype(str).str.slice(0, width).str.replace("|", "/")
    return MetadataValue.md(shown.to_markdown(index=False))


def counts_markdown(counts: pd.Series, label: str) -> MetadataValue:
    table = counts.rename_axis(label).reset_index(name="documents")
    return MetadataValue.md(table.to_markdown(index=False))


def content_hash(frame: pd.DataFrame) -> str:
    """Changes exactly when the table's content does: a rebuilt identical table keeps its version."""
    hashed = pd.util.hash_pandas_object(frame, index=False).to_numpy()
    return hashlib.sha256(hashed.tobytes()).hexdigest()[:16]


def rows_version(*parts: object) -> str:
    """A hash of a partition's rows (arrays hashed by their bytes, anything else by its text):
    changes exactly when they do, so what was built from them goes stale."""
    digest = hashlib.sha256()
    for part in parts:
        if isinstance(part, np.ndarray):
            digest.update(str((part.dtype.str, part.shape)).encode())
            digest.update(np.ascontiguousarray(part).tobytes())
        else:
            digest.update(repr(part).encode())
        digest.update(b"\0")
    return digest.hexdigest()[:16]


def run_data_version(versions: dict[str, str]) -> DataVersion:
    """The one data version Dagster gives every partition of a run: it changes when any
    partition's rows do, so Dagster's own view never calls a changed map unchanged (the
    stale rule reads each partition's own version)."""
    return DataVersion(fingerprint(sorted(versions.items())))


def failed_check_metadata(problems: list[str]) -> dict[str, str]:
    """What a partition records when its blocking check failed: the stale rule keeps such a
    partition out of everything after it, in later runs too (nothing when it passed)."""
    return {FAILED_CHECK_METADATA: "; ".join(problems)} if problems else {}


def check_result(check_name: str, problems: dict[str, list[str]]) -> AssetCheckResult:
    """One result for all tasks in the run: passed, or each failing task with its problems."""
    failed = {task: found for task, found in problems.items() if found}
    return AssetCheckResult(
        check_name=check_name,
        passed=not failed,
        metadata={task: "; ".join(found) for task, found in failed.items()}
        or {"tasks": ", ".join(problems)},
    )

"""The headless build: rebuild exactly what Dagster reports missing or stale, in order.

It runs through a real Dagster instance, so its runs show in the UI like any other.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from dagster import DagsterInstance, Definitions

from qwen_assets.defs.automation import (
    BUILD_JOB,
    StalePlan,
    record_instruction_versions,
    stale_plan,
)
from qwen_assets.settings import Settings, load_settings


@dataclass
class BuildReport:
    plan: StalePlan
    changed_instructions: list[str]
    run_ids: list[str] = field(default_factory=list)
    succeeded: bool = True


def build_stale(
    instance: DagsterInstance,
    settings: Settings | None = None,
    defs: Definitions | None = None,
    *,
    dry_run: bool = False,
    log: Callable[[str], None] = print,
) -> BuildReport:
    from qwen_assets.definitions import build_definitions

    settings = settings or load_settings()
    defs = defs or build_definitions(settings)
    changed = record_instruction_versions(instance, settings)
    for task in changed:
        log(f"instruction of task {task!r} changed (or was never recorded)")
    plan = stale_plan(defs.resolve_asset_graph(), instance)
    report = BuildReport(plan=plan, changed_instructions=changed)
    if plan.empty:
        log("everything is fresh: nothing to build")
        return report
    for target, reason in plan.reasons.items():
        log(f"rebuild {target}: {reason}")
    if dry_run:
        return report
    job = defs.resolve_job_def(BUILD_JOB)
    for run in plan.runs():
        result = job.execute_in_process(
            instance=instance,
            partition_key=run.partition_key,
            asset_selection=run.keys,
            tags={**run.tags, "qwen_assets/trigger": "qwen-assets build"},
            raise_on_error=False,
        )
        report.run_ids.append(result.run_id)
        log(f"{'built' if result.success else 'FAILED'} {run.describe()} (run {result.run_id})")
        if not result.success:
            report.succeeded = False
            break
    return report

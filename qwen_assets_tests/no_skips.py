"""Where everything must run (CI sets QWEN_ASSETS_NO_SKIPS=1), a skip is a failure: a skipped
test, and a module skipped while it is collected. A pytest plugin, loaded by conftest.py."""

from __future__ import annotations

import os

import pytest

NO_SKIPS_ENV = "QWEN_ASSETS_NO_SKIPS"


def no_skips() -> bool:
    return os.environ.get(NO_SKIPS_ENV, "").strip().lower() in {"1", "true", "yes", "on"}


def _fail(report: pytest.TestReport | pytest.CollectReport) -> None:
    reason = report.longrepr[-1] if isinstance(report.longrepr, tuple) else report.longrepr
    report.outcome = "failed"
    report.longrepr = f"skipped where {NO_SKIPS_ENV} is set: {reason}"


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo):
    outcome = yield
    report = outcome.get_result()
    if report.skipped and no_skips():
        _fail(report)


@pytest.hookimpl(hookwrapper=True)
def pytest_make_collect_report(collector: pytest.Collector):
    outcome = yield
    report = outcome.get_result()
    if report.skipped and no_skips():
        _fail(report)

"""The resource every run requires, so that a run whose process died can be told from a live
one: it records, on the run it serves, which process runs it. What is done with that record
(failing the run, freeing its pool slot) is :mod:`qwen_assets.orchestration.runs`."""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass

import psutil
from dagster import ConfigurableResource, InitResourceContext

from qwen_assets import dagster_internals

# The process that runs a run, as it recorded itself: "host/pid/start time".
WORKER_TAG = "qwen_assets/worker"


@dataclass(frozen=True)
class Worker:
    host: str
    pid: int
    started: float  # the process's start time (seconds since the epoch)

    @classmethod
    def this_process(cls) -> Worker:
        return cls(socket.gethostname(), os.getpid(), psutil.Process().create_time())

    @classmethod
    def of(cls, tag: str | None) -> Worker | None:
        try:
            host, pid, started = (tag or "").rsplit("/", 2)
            return cls(host, int(pid), float(started))
        except ValueError:
            return None

    @property
    def tag(self) -> str:
        return f"{self.host}/{self.pid}/{self.started:.3f}"

    def alive(self) -> bool:
        """Is this process still running (not a later process given its pid)?"""
        try:
            process = psutil.Process(self.pid)
            if process.status() == psutil.STATUS_ZOMBIE:
                return False
            return abs(process.create_time() - self.started) < 1.0
        except psutil.NoSuchProcess:
            return False
        except psutil.AccessDenied:  # it exists, and belongs to someone else
            return True


# The assets that use no other resource require this one directly (the others through the
# Warehouse), so that every run records its process.
RECORDS_ITS_WORKER = {"run_worker"}


class RunWorker(ConfigurableResource):
    """Records, on the run it serves, which process runs it, so that a run whose process
    died can be told from a live one (see :mod:`qwen_assets.orchestration.runs`). Every asset requires it: through the
    Warehouse resource, or directly (``RECORDS_ITS_WORKER``)."""

    def setup_for_execution(self, context: InitResourceContext) -> None:
        if context.instance is not None and context.run is not None:
            dagster_internals.tag_run(
                context.instance, context.run.run_id, {WORKER_TAG: Worker.this_process().tag}
            )

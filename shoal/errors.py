"""Every error shoal raises on purpose.

    ShoalError
    ├── InvalidSpec          bad input: names each field and the expected form
    ├── NotFound             an unknown task, node or job id
    ├── Conflict             the request does not fit the current state (cancel of a finished task)
    ├── TooLarge             a value over etcd's request limit, refused before sending
    ├── StoreUnavailable     etcd cannot be reached (says which address and what to try)
    │   └── StoreFull        etcd refuses writes: its database hit its space quota
    ├── StoreCompacted       a read at a revision etcd has compacted away (read the present instead)
    ├── ClusterError         a local cluster could not be started or stopped
    ├── TaskFailed           wait() on a task that ended failed, when asked to raise
    ├── FlowFailed           a flow run ended failed (the message says which instance and why)
    └── FlowCancelled        a flow run ended cancelled
"""
from __future__ import annotations


class ShoalError(Exception):
    """Root of every error shoal raises on purpose."""


class InvalidSpec(ShoalError):
    def __init__(self, problems: list[str]):
        self.problems = problems
        super().__init__("; ".join(problems))


class NotFound(ShoalError):
    pass


class Conflict(ShoalError):
    pass


class TooLarge(ShoalError):
    pass


class StoreUnavailable(ShoalError):
    pass


class StoreFull(StoreUnavailable):
    pass


class StoreCompacted(ShoalError):
    pass


class ClusterError(ShoalError):
    pass


class TaskFailed(ShoalError):
    """A task ended without success. For a function task that raised, `remote_type`,
    `remote_message` and `remote_traceback` describe the exception on the node."""

    def __init__(self, task):
        self.task = task
        error = getattr(task, "error", None) or {}
        self.remote_type = error.get("type")
        self.remote_message = error.get("message")
        self.remote_traceback = error.get("traceback")
        super().__init__(f"task {task.id} ended {getattr(task.state, 'value', task.state)}: {task.reason_text()}")


class FlowFailed(ShoalError):
    def __init__(self, run: str, message: str, stage: str | None = None, stderr: str = ""):
        self.run, self.stage, self.stderr = run, stage, stderr
        super().__init__(f"flow run {run} failed: {message}" + (f"\n{stderr}" if stderr else ""))


class FlowCancelled(ShoalError):
    pass

"""Python functions as tasks: `@shoal.task`, futures, gather and as_completed.

    @shoal.task(cpus=1, retries=2)
    def square(x):
        return x * x

    with shoal.connect() as c:
        f = square.submit(3)                       # a Future
        total = add.submit(f, square.submit(4))    # futures as arguments: a DAG
        print(total.result(), c.gather(square.map(range(10))))

Functions and arguments travel with cloudpickle and run in warm worker processes on
the nodes. A future passed as an argument makes the new task depend on it; the worker
hands the function that task's result.
"""
from __future__ import annotations

import base64
import os
import pickle
import time
import types
from typing import Any, Callable, Iterable, Iterator

import cloudpickle

from ..errors import InvalidSpec, ShoalError, TaskFailed
from ..model import TaskRecord, TaskSpec
from ..model.refs import FutureRef

_clients: list = []   # the sync clients open in this process, newest last


def current_client():
    if not _clients:
        raise ShoalError("no shoal client is open: use `with shoal.connect() as c:` before .submit()")
    return _clients[-1]


class Future:
    """The pending result of a function task."""

    def __init__(self, client, task_id: str, name: str | None = None):
        self.client = client
        self.id = task_id
        self.name = name
        self._record: TaskRecord | None = None
        # when the last future of a task is dropped, its client frees the result
        track = getattr(client, "track_future", None)
        if track is not None:
            track(self, task_id)

    def __repr__(self) -> str:
        state = self._record.state.value if self._record else "submitted"
        return f"<shoal.Future {self.name or ''} {self.id} {state}>"

    def done(self) -> bool:
        if self._record is None or not self._record.is_final:
            self._record = self.client.get(self.id)
        return self._record.is_final

    def record(self, timeout: float | None = None) -> TaskRecord:
        """Wait until the task ends; its record."""
        if self._record is None or not self._record.is_final:
            self._record = self.client.wait(self.id, timeout=timeout)
        return self._record

    def result(self, timeout: float | None = None) -> Any:
        """The function's return value; raises TaskFailed (with the remote exception's
        type, message and traceback) if it failed."""
        return self.client.fetch_result(self.record(timeout))

    def exception(self, timeout: float | None = None) -> TaskFailed | None:
        rec = self.record(timeout)
        return None if rec.state.value == "succeeded" else TaskFailed(rec)

    @property
    def progress(self) -> dict | None:
        """The latest progress the task reported: {"fraction", "message", "at"}."""
        return self.client.get(self.id).progress

    def release(self) -> None:
        """Free the result where it is kept (a big result's file on its node)."""
        self.client.release_result(self.id)


class RemoteFunction:
    """A function that can run as a shoal task; calling it directly still runs it here."""

    def __init__(self, fn: Callable, options: dict, py_modules: list):
        if not callable(fn):
            raise InvalidSpec([f"shoal.task: {fn!r} is not callable (decorate a function)"])
        self.fn = fn
        self.options = options
        self.py_modules = py_modules
        self.__name__ = getattr(fn, "__name__", "function")
        self.__doc__ = getattr(fn, "__doc__", None)
        probe = dict(options, function="x")
        TaskSpec.parse(probe)  # bad resources are refused at decoration time

    def __call__(self, *args, **kwargs):
        return self.fn(*args, **kwargs)

    def options_(self, **more) -> "RemoteFunction":
        """The same function with some options changed: f.options_(memory='4G').submit(x)."""
        return RemoteFunction(self.fn, {**self.options, **more}, self.py_modules)

    def spec(self, args: tuple, kwargs: dict, client=None) -> dict:
        deps: list[str] = []
        cluster = getattr(client, "cluster_id", None) if client is not None else None

        def ref(value, depth=0):
            if isinstance(value, Future):
                if cluster and getattr(value.client, "cluster_id", None) not in (None, cluster):
                    raise InvalidSpec([f"{self.__name__}: argument {value!r} is a future of another cluster "
                                       f"({value.client.address}); pass its value instead"])
                deps.append(value.id)
                return FutureRef(value.id)
            if depth < 2 and isinstance(value, (list, tuple)):
                return type(value)(ref(v, depth + 1) for v in value)
            if depth < 2 and isinstance(value, dict):
                return {k: ref(v, depth + 1) for k, v in value.items()}
            return value
        payload = (self.fn, ref(args), ref(kwargs))
        for m in self.py_modules:
            cloudpickle.register_pickle_by_value(m)
        try:
            data = cloudpickle.dumps(payload)
        except Exception as e:
            raise InvalidSpec([f"{self.__name__}: the function or its arguments cannot be pickled "
                               f"({type(e).__name__}: {e}); nothing was submitted"]) from None
        finally:
            for m in self.py_modules:
                cloudpickle.unregister_pickle_by_value(m)
        spec = {"name": self.__name__, **self.options, "function": base64.b64encode(data).decode(),
                "function_name": f"{getattr(self.fn, '__module__', '')}.{getattr(self.fn, '__qualname__', self.__name__)}"}
        if deps:
            spec["depends_on"] = list(dict.fromkeys([*self.options.get("depends_on", []), *deps]))
        return spec

    def submit(self, *args, **kwargs) -> Future:
        c = current_client()
        c.release_unreferenced()
        rec = c.submit(None, **self.spec(args, kwargs, c))
        return Future(c, rec.id, self.__name__)

    def map(self, *iterables: Iterable) -> list[Future]:
        """One task per item (or per tuple of items, like the builtin map), submitted together."""
        c = current_client()
        items = list(zip(*iterables))
        specs = [self.spec(args, {}, c) for args in items]
        if any("depends_on" in s for s in specs):  # futures among the items: one by one, in order
            return [Future(c, c.submit(None, **s).id, self.__name__) for s in specs]
        return [Future(c, tid, self.__name__) for tid in c.submit_many(specs)]


def task(fn: Callable | None = None, *, py_modules: list | None = None, **options):
    """Make a function runnable as a shoal task. Options are TaskSpec fields: cpus,
    memory, gpus, retries, backoff, timeout, labels, priority, team, job, working_dir.
    `py_modules`: modules (objects) shipped by value with the function, for code the
    nodes cannot import."""
    if fn is not None and not callable(fn):
        raise InvalidSpec([f"shoal.task: {fn!r} is not callable (decorate a function)"])
    mods = [m if isinstance(m, types.ModuleType) else __import__(m) for m in (py_modules or [])]

    def wrap(f: Callable) -> RemoteFunction:
        return RemoteFunction(f, options, mods)
    return wrap(fn) if fn is not None else wrap


def as_completed(futures: Iterable[Future], timeout: float | None = None) -> Iterator[Future]:
    """Yield the futures as their tasks end, first finished first."""
    futures = list(futures)
    if not futures:
        return
    by_id: dict[str, list[Future]] = {}
    for f in futures:
        by_id.setdefault(f.id, []).append(f)
    client = futures[0].client
    for rec in client.as_finished(list(by_id), timeout):
        for f in by_id[rec.id]:
            f._record = rec
            yield f


def progress(fraction: float, message: str = "") -> None:
    """Report how far the running task has got (0..1, and a few words). Cheap to call
    often: the node passes on a few updates a second."""
    path = os.environ.get("SHOAL_PROGRESS_FILE")
    if not path:
        return  # not running as a task: nothing to report to
    fraction = min(1.0, max(0.0, float(fraction)))
    with open(path, "a") as f:
        f.write(f"{fraction:.4f} {message}".replace("\n", " ") + "\n")


def load_result(data: bytes) -> Any:
    return pickle.loads(data)


def raise_for(rec: TaskRecord) -> None:
    if rec.state.value != "succeeded":
        raise TaskFailed(rec)

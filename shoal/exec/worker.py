"""A warm Python worker: a long-lived process that runs one function task at a time for
its node. Frames on its stdin/stdout are 4-byte lengths plus pickles; while a task
runs, file descriptors 1 and 2 are that attempt's log files.

    python -m shoal.exec.worker
"""
from __future__ import annotations

import base64
import os
import pickle
import struct
import sys
import traceback
import urllib.error
import urllib.request
from pathlib import Path

_LEN = struct.Struct(">I")


def read_frame(f) -> dict | None:
    head = f.read(4)
    if len(head) < 4:
        return None
    (n,) = _LEN.unpack(head)
    data = b""
    while len(data) < n:
        chunk = f.read(n - len(data))
        if not chunk:
            return None
        data += chunk
    return pickle.loads(data)


def write_frame(f, obj) -> None:
    data = pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
    f.write(_LEN.pack(len(data)) + data)
    f.flush()


def fetch_result(api: str, task_id: str) -> object:
    """The value a finished task returned, from any node's API (it finds the holder)."""
    import cloudpickle  # noqa: F401  (results may need its reducers)
    try:
        with urllib.request.urlopen(f"{api}/v1/tasks/{task_id}/result", timeout=300) as resp:
            return pickle.loads(resp.read())
    except urllib.error.HTTPError as e:
        from shoal.errors import from_body
        text = e.read().decode(errors="replace")
        raise from_body(e.code, text, f"HTTP {e.code}: {text[:300]}",
                        origin=f"could not fetch the result of {task_id}") from None


class Worker:
    def __init__(self) -> None:
        # private copies of the protocol pipes; 0/1/2 belong to the tasks from now on
        self.inp = os.fdopen(os.dup(0), "rb", buffering=0)
        self.out = os.fdopen(os.dup(1), "wb", buffering=0)
        null = os.open(os.devnull, os.O_RDWR)
        for fd in (0, 1, 2):
            os.dup2(null, fd)
        os.close(null)
        self.env = dict(os.environ)
        self.cwd = os.getcwd()
        self._files: dict[str, int] = {}   # scratch output files, by path
        self.path = list(sys.path)

    def serve(self) -> None:
        write_frame(self.out, {"ready": os.getpid()})
        while (msg := read_frame(self.inp)) is not None:
            write_frame(self.out, self.run(msg))
        for path, fd in self._files.items():  # the node let us go: leave no scratch behind
            os.close(fd)
            os.unlink(path)

    def run(self, msg: dict) -> dict:
        # output goes to two scratch files kept open across tasks (truncated each time) and
        # renamed to the attempt's log names only when something was written: creating a
        # file costs far more than the whole of a small task on some filesystems
        scratch = self._scratch(Path(msg["out"]).parent)
        for fd, (path, f) in zip((1, 2), scratch):
            os.ftruncate(f, 0)
            os.lseek(f, 0, os.SEEK_SET)
            os.dup2(f, fd)
        self._set_env({**self.env, **msg["env"]})
        where = msg.get("working_dir")
        try:
            if where:
                sys.path.insert(0, where)
            os.chdir(msg.get("cwd") or where or self.cwd)
            return self._call(msg)
        finally:
            for stream in (sys.stdout, sys.stderr):
                try:
                    stream.flush()
                except Exception:
                    pass
            null = os.open(os.devnull, os.O_WRONLY)
            os.dup2(null, 1)
            os.dup2(null, 2)
            os.close(null)
            for (path, f), target in zip(scratch, (msg["out"], msg["err"])):
                if os.fstat(f).st_size:
                    os.rename(path, target)
                    os.close(f)
                    self._files.pop(path, None)
            os.chdir(self.cwd)
            sys.path[:] = self.path

    def _scratch(self, log_dir: Path) -> list[tuple[str, int]]:
        out = []
        for kind in ("out", "err"):
            path = str(log_dir / f".worker-{os.getpid()}.{kind}")
            if path not in self._files:
                self._files[path] = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
            out.append((path, self._files[path]))
        return out

    @staticmethod
    def _set_env(want: dict) -> None:
        """Make os.environ equal `want`, touching only what differs."""
        env = os.environ
        for k in [k for k in env if k not in want]:
            del env[k]
        for k, v in want.items():
            if env.get(k) != v:
                env[k] = v

    def _call(self, msg: dict) -> dict:
        import cloudpickle
        from shoal.model.refs import swap_refs
        try:
            fn, args, kwargs = cloudpickle.loads(base64.b64decode(msg["function"]))
        except ModuleNotFoundError as e:
            return _error(e, hint=f"module {e.name!r} is not importable on node {msg['node']}: install it "
                                  "there, or pass py_modules=[...] (shipped with the task) or a working_dir "
                                  "that holds it")
        except Exception as e:
            return _error(e, hint="the function or its arguments could not be unpickled on the node")
        try:
            cache: dict[str, object] = {}

            def resolve(task_id: str):
                if task_id not in cache:
                    cache[task_id] = fetch_result(msg["api"], task_id)
                return cache[task_id]
            args = swap_refs(args, resolve)
            kwargs = swap_refs(kwargs, resolve)
            value = fn(*args, **kwargs)
        except BaseException as e:  # the task's failure, reported to its caller
            if isinstance(e, (SystemExit, KeyboardInterrupt)) and not msg.get("catch_exit", True):
                raise
            return _error(e)
        try:
            data = cloudpickle.dumps(value)
        except Exception as e:
            return _error(e, hint="the function's return value cannot be pickled")
        if len(data) <= msg["inline_limit"]:
            return {"result": base64.b64encode(data).decode()}
        tmp = msg["result_path"] + ".tmp"
        with open(tmp, "wb") as f:
            f.write(data)
        os.replace(tmp, msg["result_path"])
        return {"result_bytes": len(data)}


def _error(e: BaseException, hint: str | None = None) -> dict:
    kind = type(e)
    return {"error": {"type": f"{kind.__module__}.{kind.__qualname__}".removeprefix("builtins."),
                      "message": (f"{e} ({hint})" if hint else str(e)),
                      "traceback": traceback.format_exc()}}


if __name__ == "__main__":
    Worker().serve()

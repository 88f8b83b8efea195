"""The node's warm Python workers for function tasks: started on demand, reused, one
task at a time each. A worker that dies mid-task, runs past its timeout, or grows past
its task's memory limit is killed and replaced; the attempt fails and is retried by the
task's policy like any other."""
from __future__ import annotations

import asyncio
import os
import signal
import struct
import sys
import time
import pickle
from pathlib import Path

import psutil

from ..model import TaskRecord
from .attempt import AttemptResult, log_paths, tail
from . import attempt as _attempt
from .limits import MemoryLimit

_LEN = struct.Struct(">I")
INLINE_RESULT_BYTES = 64 * 1024


class _Worker:
    def __init__(self, proc: asyncio.subprocess.Process):
        self.proc = proc
        self.pid = proc.pid
        self.tasks_run = 0
        # a cgroup of its own, where allowed: the kernel enforces each task's memory cap
        # and keeps its peak; elsewhere the pool polls the worker's RSS instead
        self.cg = MemoryLimit.group(proc.pid, f"worker-{proc.pid}")
        self.cap: int | None = None        # the cgroup's current memory cap
        self.ps = psutil.Process(proc.pid)

    async def send(self, obj) -> None:
        data = pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
        self.proc.stdin.write(_LEN.pack(len(data)) + data)
        await self.proc.stdin.drain()

    async def recv(self):
        head = await self.proc.stdout.readexactly(4)
        return pickle.loads(await self.proc.stdout.readexactly(_LEN.unpack(head)[0]))

    def kill(self) -> None:
        try:
            os.killpg(self.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass

    def rss(self) -> int:
        try:
            return self.ps.memory_info().rss
        except psutil.Error:
            return 0

    def cpu_s(self) -> float:
        try:
            t = self.ps.cpu_times()
            return t.user + t.system
        except psutil.Error:
            return 0.0

    def set_cap(self, limit: int | None) -> bool:
        """Cap the worker's cgroup for the next task (no write when it is already so)."""
        if limit == self.cap:
            return True
        ok = self.cg.set_limit(limit)
        self.cap = limit if ok else None
        return ok


class FunctionAttempt:
    """One function attempt; the same face as exec.attempt.Attempt (done, kill)."""

    def __init__(self, task_id: str, n: int, done: asyncio.Future):
        self.task_id = task_id
        self.n = n
        self.done = done
        self.started_at = time.time()
        self.worker: _Worker | None = None
        self.kill_reason: str | None = None
        self.timed_out = False

    def kill(self, reason: str, grace_s: float) -> None:
        """A worker shares nothing with the next task once killed, so no grace is
        needed for its sake; the task's own children go with its process group."""
        if self.done.done() or self.kill_reason:
            return
        self.kill_reason = reason
        if self.worker is not None:
            self.worker.kill()


class WorkerPool:
    def __init__(self, node_id: str, api_url: str, results_dir: Path, max_idle: int,
                 worker_max_rss: int = 2 << 30):
        self.node_id = node_id
        self.api_url = api_url
        self.results_dir = results_dir
        self.max_idle = max_idle
        self.worker_max_rss = worker_max_rss
        self.idle: list[_Worker] = []
        self.started = 0
        self._tasks: set[asyncio.Task] = set()

    def start(self, record: TaskRecord, log_dir: Path, tail_bytes: int, base_env: dict) -> FunctionAttempt:
        _attempt.check_cwd(record.spec, self.node_id)
        loop = asyncio.get_running_loop()
        att = FunctionAttempt(record.id, record.attempt, loop.create_future())
        t = loop.create_task(self._drive(att, record, log_dir, tail_bytes, base_env))
        self._tasks.add(t)
        t.add_done_callback(self._tasks.discard)
        return att

    async def _spawn(self) -> _Worker:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "shoal.exec.worker", stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE, process_group=0, close_fds=True)
        w = _Worker(proc)
        if _attempt._guard is not None:
            _attempt._guard.watch(w.pid)
        hello = await w.recv()
        assert hello.get("ready") == w.pid
        self.started += 1
        return w

    def _retire(self, w: _Worker) -> None:
        w.kill()
        if _attempt._guard is not None:
            _attempt._guard.forget(w.pid)

        async def reap():
            await w.proc.wait()
            if w.cg is not None:
                w.cg.release()
        t = asyncio.get_running_loop().create_task(reap())
        self._tasks.add(t)
        t.add_done_callback(self._tasks.discard)

    async def _drive(self, att: FunctionAttempt, record: TaskRecord, log_dir: Path, tail_bytes: int,
                     base_env: dict) -> None:
        spec = record.spec
        out_path, err_path = log_paths(log_dir, record.id, record.attempt)
        result_path = self.results_dir / f"{record.id}.{record.attempt}.pickle"
        reply, worker_died = None, None
        timers = []
        try:
            w = self.idle.pop() if self.idle else await self._spawn()
            att.worker = w
            if att.kill_reason:
                w.kill()
                raise ConnectionError("killed before it started")
            loop = asyncio.get_running_loop()
            if spec.timeout:
                def on_timeout():
                    att.timed_out = True
                    att.kill(f"timed out after {float(spec.timeout):g}s", 0)
                timers.append(loop.call_later(float(spec.timeout), on_timeout))
            enforced = False
            if w.cg is not None:
                w.cg.reset_peak()
                enforced = w.set_cap(spec.memory or None) and bool(spec.memory)
            if spec.memory and not enforced:
                timers.append(loop.create_task(self._watch_memory(att, w, spec.memory)))
            env = {**{k: v for k, v in spec.env.items()}, "SHOAL_TASK_ID": record.id,
                   "SHOAL_ATTEMPT": str(record.attempt), "SHOAL_NODE": self.node_id,
                   "SHOAL_PROGRESS_FILE": str(out_path.with_suffix(".progress")),
                   "SHOAL_ADDRESS": self.api_url}
            att.started_at = time.time()
            cpu0 = w.cpu_s()
            await w.send({"function": spec.function, "env": env, "cwd": spec.cwd,
                          "working_dir": spec.working_dir, "out": str(out_path), "err": str(err_path),
                          "result_path": str(result_path), "inline_limit": INLINE_RESULT_BYTES,
                          "api": self.api_url, "node": self.node_id})
            reply = await w.recv()
            cpu_s = max(0.0, w.cpu_s() - cpu0)
            rss = (w.cg.peak_bytes() if w.cg is not None else None) or w.rss()
            w.tasks_run += 1
            if rss > max(spec.memory or 0, self.worker_max_rss) or len(self.idle) >= self.max_idle:
                self._retire(w)  # it grew too big (or we have enough warm ones)
            else:
                self.idle.append(w)
        except (asyncio.IncompleteReadError, ConnectionError, BrokenPipeError) as e:
            worker_died = e
            cpu_s, rss = 0.0, None
            if att.worker is not None:
                code = await _exit_code(att.worker)
                self._retire(att.worker)
                worker_died = code
        finally:
            for t in timers:
                t.cancel()
        finished = time.time()
        out, out_size = tail(out_path, tail_bytes)
        err, err_size = tail(err_path, tail_bytes)
        res = AttemptResult(exit_code=None, signal=None, started_at=att.started_at, finished_at=finished,
                            cpu_s=round(cpu_s, 6), max_rss_bytes=rss, stdout_tail=out, stderr_tail=err,
                            stdout_bytes=out_size, stderr_bytes=err_size, timed_out=att.timed_out)
        if reply is None:
            oom = att.worker is not None and att.worker.cg is not None and att.worker.cg.oom_killed()
            res.reason = att.kill_reason or (
                f"killed for exceeding its memory limit of {spec.memory >> 20} MiB" if oom and spec.memory
                else f"its worker process died ({_words(worker_died)}) mid-task")
        elif "error" in reply:
            res.error = reply["error"]
            res.exit_code = 1
            res.reason = f"raised {reply['error']['type']}: {reply['error']['message']}"[:500]
        else:
            res.exit_code = 0
            res.result = reply.get("result")
            if "result_bytes" in reply:
                res.result_ref = {"node": self.node_id, "bytes": reply["result_bytes"],
                                  "path": str(result_path)}
        if not att.done.done():
            att.done.set_result(res)

    async def _watch_memory(self, att: FunctionAttempt, w: _Worker, limit: int) -> None:
        while True:
            await asyncio.sleep(0.25)
            if w.rss() > limit:
                att.kill(f"killed for exceeding its memory limit of {limit >> 20} MiB", 0)
                return

    async def close(self) -> None:
        for w in self.idle:
            self._retire(w)
        self.idle.clear()
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=5)


async def _exit_code(w: _Worker) -> int | None:
    try:
        return await asyncio.wait_for(w.proc.wait(), 2)
    except asyncio.TimeoutError:
        return None


def _words(code) -> str:
    if isinstance(code, int):
        return f"killed by signal {-code}" if code < 0 else f"exit code {code}"
    return "it stopped answering"

"""Every error shoal raises on purpose, how one travels over HTTP (`to_body`, `from_body`),
and how problems found in input are collected (`Problems`) and worded (`describe_validation`).

    ShoalError
    ├── InvalidSpec              bad input: names each field and the expected form
    │   └── SourceNotFound       a flow's read: pattern matched no files
    ├── NotFound                 an unknown task, node, job or flow run id
    ├── Conflict                 the request does not fit the current state (cancel of a finished task)
    ├── TooLarge                 a value over etcd's request limit, refused before sending
    ├── StoreUnavailable         etcd cannot be reached (says which address and what to try)
    │   └── StoreFull            etcd refuses writes: its database hit its space quota
    ├── StoreCompacted           a read at a revision etcd has compacted away (read the present instead)
    ├── ClusterError             no node answers, or a local cluster could not be started or stopped
    ├── NodeUnreachable          the node that holds what was asked for did not answer another node
    ├── LogIncomplete            only the end of a log survives: the node that held it is gone
    ├── TaskFailed               wait() on a task that ended failed, when asked to raise; also an
    │                            instance of the remote exception's class when the client has it
    ├── FlowFailed               a flow run failed (its run, the stage, the end of its stderr)
    ├── FlowCancelled            a flow run was cancelled
    ├── SourceError              a flow's source could not be read (names the file)
    ├── SinkError                a flow's sink could not write, commit or abort (names the place)
    └── InternalError            raised and caught inside a node: why a piece of work stopped,
        │                        kept as that work's reason in words, never an HTTP answer
        ├── SetupError           an attempt could not start (its cwd, stdin or command is missing)
        ├── FilterFailed         a stage's command exited non-zero (with the end of its stderr)
        ├── BadRecordsExceeded   a stage instance saw more malformed records than the flow tolerates
        ├── LostDriverRole       this node no longer holds a flow run's driver role: another drives it
        └── StreamError          the flow data plane between stage instances
            ├── StreamBroken     a peer went away or sent something that is not a frame
            ├── UpstreamFailed   an upstream instance failed and said so
            └── UpstreamLost     an upstream instance vanished mid-stream (its process or node died)

An error crosses HTTP as `{"error": <class name>, "message": ..., <its fields>}` (`fields`
names the structured attributes a class carries, such as InvalidSpec's `problems`), and is
rebuilt as the same class on the other side; the status codes live in `shoal.api.errors`.
`RemoteTraceback` is no ShoalError: it carries a node's traceback text as a TaskFailed's cause.
`UnplaceableWarning` is a warning, not an error: a task was accepted that no live node can run.
"""
from __future__ import annotations

import builtins
import difflib
import functools
import json
import re
import sys
from typing import Any, Callable, Iterable, Iterator, NamedTuple


class ShoalError(Exception):
    """Root of every error shoal raises on purpose."""

    fields: tuple[str, ...] = ()   # attributes that travel with the message in an HTTP body

    def __reduce__(self):
        # rebuilt without calling __init__: subclasses take other arguments than the message
        return _restore, (type(self), str(self)), self.__dict__


def _restore(cls: type[ShoalError], message: str) -> ShoalError:
    e = cls.__new__(cls)
    Exception.__init__(e, message)
    return e


class InvalidSpec(ShoalError):
    fields = ("problems",)

    def __init__(self, problems: list[str]):
        self.problems = problems
        super().__init__("; ".join(problems))


class SourceNotFound(InvalidSpec):
    """Patterns that matched no files (one problem each)."""


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


class NodeUnreachable(ShoalError):
    pass


class LogIncomplete(ShoalError):
    """Raised after the part of a log that survives was given out: how much of how much
    (total_bytes is None when not even the size is known)."""

    fields = ("kept_bytes", "total_bytes")

    def __init__(self, message: str, kept_bytes: int = 0, total_bytes: int | None = None):
        self.kept_bytes, self.total_bytes = kept_bytes, total_bytes
        super().__init__(message)


class TaskFailed(ShoalError):
    """A task ended without success. For a function task that raised, `remote_type`,
    `remote_message` and `remote_traceback` describe the exception on the node.

    When the client knows the remote exception's class (a builtin, or a class of a module
    it has imported), `TaskFailed(task)` is an instance of a class made on the fly that
    inherits both TaskFailed and that class, so `except ValueError` catches a ValueError
    raised in the task. Its `__cause__` carries the remote traceback, so an uncaught one
    prints it. A class that cannot be mixed in (its layout, a ShoalError, not an Exception)
    leaves a plain TaskFailed."""

    fields = ("remote_type", "remote_message", "remote_traceback")
    task = None   # the TaskRecord; not carried over HTTP
    remote_type = remote_message = remote_traceback = None

    def __new__(cls, task=None, *args, **kwargs):
        if cls is TaskFailed and task is not None:
            cls = remote_class((getattr(task, "error", None) or {}).get("type"))
        return super().__new__(cls)

    def __init__(self, task):
        self.task = task
        error = getattr(task, "error", None) or {}
        self.remote_type = error.get("type")
        self.remote_message = error.get("message")
        self.remote_traceback = error.get("traceback")
        # Exception's own __init__, not super(): a mixed-in class's __init__ may take
        # other arguments than one message
        Exception.__init__(self, f"task {task.id} ended {getattr(task.state, 'value', task.state)}: "
                                 f"{task.reason_text()}")
        if self.remote_traceback:
            self.__cause__ = RemoteTraceback(self.remote_traceback)


class UnplaceableWarning(UserWarning):
    """A submitted task that no live node could ever run: it was accepted and stays
    queued (a node that fits may join later)."""


class RemoteTraceback(Exception):
    """The traceback of an exception raised on a node, as text: the `__cause__` of the
    TaskFailed that reports it, so Python prints it above the local one."""

    def __str__(self) -> str:
        return f'\n"""\n{self.args[0].rstrip()}\n"""'


def _remote_exception_type(name: str | None) -> type | None:
    """The class a remote exception's type name (`ValueError`, `pkg.mod.Error`) stands
    for, if this process has it: a builtin, or a class of a module already imported
    (code that can `except` a class has imported its module, so nothing is imported here)."""
    if not name:
        return None
    if "." not in name:
        found = getattr(builtins, name, None)
    else:
        parts, found = name.split("."), None
        for i in range(len(parts) - 1, 0, -1):
            module = sys.modules.get(".".join(parts[:i]))
            if module is not None:
                found = module
                for part in parts[i:]:
                    found = getattr(found, part, None)
                break
    if isinstance(found, type) and issubclass(found, Exception) and not issubclass(found, ShoalError):
        return found
    return None


@functools.lru_cache(maxsize=256)
def _mixed(remote: type) -> type[TaskFailed]:
    """TaskFailed mixed with `remote`, made once per class; TaskFailed when they cannot mix."""
    try:
        cls = type(f"TaskFailed({remote.__qualname__})", (TaskFailed, remote), {
            "__module__": __name__, "__str__": BaseException.__str__, "__repr__": BaseException.__repr__,
            "__reduce__": _reduce_mixed, "_mixed_with": remote})
        cls.__new__(cls)  # some classes build only with their own arguments
        return cls
    except Exception:
        return TaskFailed


def remote_class(name: str | None) -> type[TaskFailed]:
    """The TaskFailed class that reports a remote exception of type `name`."""
    remote = _remote_exception_type(name)
    return _mixed(remote) if remote is not None else TaskFailed


def _reduce_mixed(e: TaskFailed):
    return _restore_remote, (e.remote_type, str(e)), e.__dict__


def _restore_remote(remote_type: str | None, message: str) -> TaskFailed:
    return _restore(remote_class(remote_type), message)


class FlowFailed(ShoalError):
    fields = ("run", "stage", "stderr")

    def __init__(self, run: str, message: str, stage: str | None = None, stderr: str = ""):
        self.run, self.stage, self.stderr = run, stage, stderr
        super().__init__(f"flow run {run} failed: {message}" + (f"\n{stderr}" if stderr else ""))


class FlowCancelled(ShoalError):
    pass


class SourceError(ShoalError):
    """A source could not be read (the message names the file)."""


class SinkError(ShoalError):
    """A sink could not write, commit or abort (the message names the place)."""


class InternalError(ShoalError):
    """Raised and caught inside a node; what it says is kept as the reason work stopped."""


class SetupError(InternalError):
    """The attempt could not start for a reason in its spec or on this node."""


class FilterFailed(InternalError):
    fields = ("code", "stderr_tail")

    def __init__(self, code: int, stderr_tail: str):
        self.code = code
        self.stderr_tail = stderr_tail
        how = f"was killed by signal {-code}" if code < 0 else f"exited with status {code}"
        super().__init__(f"command {how}" + (f"; its stderr ends:\n{stderr_tail}" if stderr_tail else ""))


class BadRecordsExceeded(InternalError):
    pass


class LostDriverRole(InternalError):
    """The run record could not be written: this node no longer holds the run's driver role."""


class StreamError(InternalError):
    """Something went wrong on a stream between stage instances."""


class StreamBroken(StreamError):
    """The peer went away or sent something that is not a frame."""


class UpstreamFailed(StreamError):
    """An upstream instance failed and said so (ABORT)."""


class UpstreamLost(StreamError):
    """An upstream instance vanished mid-stream: its process or its node died."""


# -- over HTTP ----------------------------------------------------------------------------

# an unknown class name (a newer server) is read by its status family
_BY_STATUS = {404: NotFound, 409: Conflict, 413: TooLarge, 422: InvalidSpec, 503: StoreUnavailable}


def error_classes() -> dict[str, type[ShoalError]]:
    """Every class of the tree, by name."""
    out: dict[str, type[ShoalError]] = {}
    todo = [ShoalError]
    while todo:
        cls = todo.pop()
        if "_mixed_with" not in cls.__dict__:  # made on the fly for a remote exception
            out[cls.__name__] = cls
        todo.extend(cls.__subclasses__())
    return out


def to_body(e: ShoalError) -> dict:
    """The JSON body that carries `e`: its class name, message and fields."""
    cls = TaskFailed if isinstance(e, TaskFailed) and "_mixed_with" in type(e).__dict__ else type(e)
    body = {"error": cls.__name__, "message": str(e)}
    for name in type(e).fields:
        body[name] = getattr(e, name, None)
    return body


def from_body(status: int, body: dict | str | bytes | None, fallback_text: str, origin: str = "") -> ShoalError:
    """The error an HTTP answer with `status` and `body` (decoded JSON, or the raw text,
    which need not be JSON) carries, rebuilt as its own class; `fallback_text` is the
    message when the body has none. `origin` (which node answered) goes in front of the
    message when a node relays it."""
    if isinstance(body, (str, bytes)):
        try:
            body = json.loads(body)
        except ValueError:
            body = None
    body = body if isinstance(body, dict) else {}
    cls = error_classes().get(body.get("error")) if isinstance(body.get("error"), str) else None
    if cls is None:
        cls = _BY_STATUS.get(status, ShoalError)
    if cls is TaskFailed:  # keep the remote exception's type here too
        cls = remote_class(body.get("remote_type") if isinstance(body.get("remote_type"), str) else None)
    message = body.get("message")
    message = message if isinstance(message, str) and message else fallback_text
    e = _restore(cls, f"{origin}: {message}" if origin else message)
    for name in cls.fields:
        setattr(e, name, body.get(name))
    if isinstance(e, TaskFailed) and isinstance(e.remote_traceback, str) and e.remote_traceback:
        e.__cause__ = RemoteTraceback(e.remote_traceback)
    if issubclass(cls, InvalidSpec) and not (isinstance(e.problems, list) and e.problems):
        e.problems = [message]
    return e


# -- problems in input --------------------------------------------------------------------

Path = tuple   # ("stages", 2, "input", "from"): field names and list indexes


def path_text(path: str | Path) -> str:
    """("stages", 2, "input", "from") -> "stages[2].input.from"; a string is kept."""
    if isinstance(path, str):
        return path
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def path_parts(text: str) -> list[str | int]:
    """The inverse of path_text: "steps.a.command[1]" -> ["steps", "a", "command", 1]."""
    return [int(p[1:-1]) if p.startswith("[") else p for p in re.findall(r"\[\d+\]|[^.\[\]]+", text)]


def join_path(prefix: str, path: str) -> str:
    if not prefix or not path:
        return prefix or path
    return prefix + path if path.startswith("[") else f"{prefix}.{path}"


class Problem(NamedTuple):
    path: str | Path      # where; "" or () for the input as a whole
    message: str          # what is wrong, and the form expected
    line: int | None      # the line in a file, when the input came from one

    def __str__(self) -> str:
        where = path_text(self.path)
        text = f"{where}: {self.message}" if where else self.message
        return f"line {self.line}: {text}" if self.line is not None else text


class Problems:
    """The problems found in some input, collected to be reported all at once: one
    InvalidSpec naming each, ordered by line when they come from a file."""

    def __init__(self) -> None:
        self.items: list[Problem] = []

    def add(self, path: str | Path, message: str, line: int | None = None) -> None:
        """One problem: `path: message` (`line N: path: message` with a line)."""
        self.items.append(Problem(path, message, line))

    def extend(self, prefix: str | Path, problems: Iterable[str], line: int | None = None) -> None:
        """Problems already worded (an InvalidSpec's, `path: message`) found under
        `prefix`: each becomes `prefix.path: message`, its path kept in parts."""
        base = tuple(path_parts(prefix)) if isinstance(prefix, str) else tuple(prefix)
        for text in problems:
            head, sep, rest = text.partition(": ")
            if sep:
                self.items.append(Problem((*base, *path_parts(head)), rest, line))
            else:
                self.items.append(Problem(base, text, line))

    def __bool__(self) -> bool:
        return bool(self.items)

    def __len__(self) -> int:
        return len(self.items)

    def __iter__(self) -> Iterator[Problem]:
        return iter(self.items)

    def texts(self) -> list[str]:
        """Each problem once, by line (those without one first), else in the order found."""
        ordered = sorted(self.items, key=lambda p: -1 if p.line is None else p.line)
        return list(dict.fromkeys(str(p) for p in ordered))

    def raise_if_any(self) -> None:
        if self.items:
            raise InvalidSpec(self.texts())


def suggest(word: str, choices: Iterable[str]) -> str:
    """` (did you mean 'x'?)` when one of `choices` is close to `word`, else ''."""
    close = difflib.get_close_matches(str(word), [str(c) for c in choices], n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


# parts of a pydantic error location that name a union branch or a validator, not a field
_BRANCH_PREFIXES = ("function-", "union[", "constrained-", "list[", "dict[", "tuple[", "set[", "literal[",
                    "nullable[", "default[", "chain[", "lax-", "json-or-python[", "tagged-union[", "is-instance[")
_BRANCH_NAMES = {"str", "int", "float", "bool", "bytes", "none"}


def _is_branch(part: Any) -> bool:
    return isinstance(part, str) and (part in _BRANCH_NAMES or part.startswith(_BRANCH_PREFIXES))


Fields = Iterable[str] | Callable[[Path], Iterable[str] | None] | None


def validation_problems(errors: Any, *, forms: dict[str, str] | None = None, fields: Fields = None,
                        noun: str = "field") -> list[tuple[Path, str]]:
    """(location, what is wrong) for each of pydantic's `errors` (a ValidationError or its
    .errors() list), one per location. `forms`: the expected form of each field, by name;
    `fields`: the known field names (or a function of the location of the model that
    holds them), listed for an unknown field; `noun`: what a field is called (option)."""
    forms = forms or {}

    def known_at(loc: Path) -> list[str]:  # the fields of the model at `loc`, when known
        if callable(fields):
            return list(fields(loc) or [])
        return list(fields or []) if not loc else []

    raw = errors.errors() if hasattr(errors, "errors") else list(errors)
    found: list[tuple[Path, str, bool]] = []   # (loc, message, came from a union branch)
    for err in raw:
        loc = tuple(p for p in err.get("loc", ()) if not _is_branch(p))
        branch = len(loc) != len(tuple(err.get("loc", ())))
        # the deepest part with a known form: env.A is about env's form
        field = next((p for p in reversed(loc) if isinstance(p, str) and p in forms), "")
        got, kind = err.get("input"), err.get("type", "")
        msg = str(err.get("msg", "")).removeprefix("Value error, ")
        if kind == "json_invalid":
            found.append((("body",), f"not valid JSON ({(err.get('ctx') or {}).get('error', 'could not parse')})",
                          False))
        elif kind == "extra_forbidden":
            known = known_at(loc[:-1])
            text = f"unknown {noun}{suggest(loc[-1], known) if loc else ''}"
            found.append((loc, text + (f" (known {noun}s: {', '.join(known)})" if known else ""), branch))
        elif kind == "missing":
            found.append((loc, "required" + (f" ({forms[field]})" if field in forms else ""), branch))
        elif kind in ("value_error", "assertion_error"):
            # a model's own check: it names the field first when it is about one (`key: ...`)
            named = re.match(r"([A-Za-z_]\w*): (.*)", msg, re.S)
            if named and (named.group(1) in known_at(loc) or (not loc and named.group(1) in forms)):
                found.append(((*loc, named.group(1)), named.group(2), branch))
            else:
                found.append((loc, msg, branch))
        else:
            form = forms.get(field)
            found.append((loc, f"{got!r} is not valid" + (f" (expected {form})" if form else f": {msg}"), branch))
    # a union reports each branch: where one branch's problem lies deeper (command[1]), it says more
    deeper = {loc[:i] for loc, _, _ in found for i in range(1, len(loc))}
    out: dict[Path, str] = {}
    for loc, msg, branch in found:
        if branch and loc in deeper:
            continue
        out.setdefault(loc, msg)
    return list(out.items())


def describe_validation(errors: Any, prefix: str = "", *, forms: dict[str, str] | None = None,
                        fields: Fields = None, noun: str = "field", whole: str = "") -> list[str]:
    """One line per problem in pydantic's `errors`, naming the field (under `prefix`) and
    the form it expects: `memory: '2 gigs' is not a size (use 512M, 2G)`. A problem with
    the input as a whole is put under `whole` (e.g. "task") when there is no prefix."""
    out = []
    for loc, msg in validation_problems(errors, forms=forms, fields=fields, noun=noun):
        where = join_path(prefix, path_text(loc)) or whole
        out.append(f"{where}: {msg}" if where else msg)
    return out

"""Files and fsspec URLs as a sink: parts are hidden files next to the target, joined in index
order and renamed into place at commit (in the kernel where the filesystem allows)."""
from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import posixpath
from typing import BinaryIO
from ....errors import InvalidSpec, SinkError
from .base import NAME_MAX, PartWriter, Sink, check_ids

COPY_BLOCK = 8 << 20


S3_MIN_PART = 5 << 20       # an S3 multipart copy needs every part but the last this large


S3_MAX_PART = 5 << 30


def _is_local(url: str) -> bool:
    return "://" not in url or url.startswith("file://")


def _fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _append_file(out_fd: int, path: str) -> None:
    """Append the file at `path` to out_fd in the kernel (copy_file_range, else sendfile)."""
    with open(path, "rb", buffering=0) as f:
        fd = f.fileno()
        left = os.fstat(fd).st_size
        use_range = hasattr(os, "copy_file_range")
        while left > 0:
            n = min(left, 1 << 30)
            if use_range:
                try:
                    n = os.copy_file_range(fd, out_fd, n)
                except OSError as e:
                    if e.errno not in (errno.EXDEV, errno.ENOSYS, errno.EOPNOTSUPP, errno.EINVAL):
                        raise
                    use_range = False
                    continue
            else:
                n = os.sendfile(out_fd, fd, None, n)
            if n == 0:
                break
            left -= n


class _LocalPart:
    def __init__(self, path: str):
        self.path = path
        self.f: BinaryIO | None = open(path, "wb", buffering=1 << 20)

    def write(self, data: bytes) -> None:
        self.f.write(data)

    def close(self) -> None:
        if self.f is not None:
            self.f.flush()
            os.fsync(self.f.fileno())
            self.f.close()
            self.f = None

    def discard(self) -> None:
        if self.f is not None:
            with contextlib.suppress(OSError):
                self.f.close()
            self.f = None
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)


class _RemotePart:
    def __init__(self, fs, path: str):
        self.fs, self.path = fs, path
        self.f = fs.open(path, "wb")

    def write(self, data: bytes) -> None:
        self.f.write(data)

    def close(self) -> None:
        if self.f is not None:
            self.f.close()
            self.f = None

    def discard(self) -> None:
        if self.f is not None:
            with contextlib.suppress(Exception):
                if hasattr(self.f, "discard"):
                    self.f.discard()
                else:
                    self.f.close()
            self.f = None
        with contextlib.suppress(FileNotFoundError):
            self.fs.rm(self.path)


class FileSink(Sink):
    """One file (local path or fsspec URL). Instance i writes the hidden part
    `.<name>.<run>.<attempt>.<i>.part` next to the target; commit joins the parts in
    index order into `.<name>.<run>.<attempt>.ready` and renames that onto the target
    (refusing to replace an existing file unless overwrite)."""

    def __init__(self, path: str, overwrite: bool = False, storage_options: dict | None = None):
        self.url = path
        self.overwrite = overwrite
        self.storage_options = dict(storage_options or {})
        self.local = _is_local(path)
        if self.local:
            self.fs = None
            self.path = os.path.abspath(os.path.expanduser(path.removeprefix("file://")))
            self.dir, self.name = os.path.split(self.path)
        else:
            from fsspec.core import url_to_fs
            try:
                self.fs, self.path = url_to_fs(path, **self.storage_options)
            except ImportError as e:
                raise InvalidSpec([f"write: {path}: {e} (install the package for this protocol, "
                                   f"e.g. s3fs for s3://)"]) from None
            except (ValueError, TypeError) as e:
                raise InvalidSpec([f"write: {path}: {e}"]) from None
            self.dir, self.name = posixpath.split(self.path)
        if not self.name:
            raise InvalidSpec([f"write: {path} names a directory (give a file path)"])

    # names

    def _join(self, name: str) -> str:
        return os.path.join(self.dir, name) if self.local else posixpath.join(self.dir, name)

    def _prefix(self, run: str, attempt: int) -> str:
        """`.<name>.<run>.<attempt>`, shortened by a digest where a file name would be too long."""
        prefix = f".{self.name}.{run}.{attempt}"
        if len(prefix.encode()) > NAME_MAX - 32:
            digest = hashlib.sha1(f"{self.name}/{run}".encode()).hexdigest()[:20]
            prefix = f".{self.name.encode()[:100].decode(errors='ignore')}.{digest}.{attempt}"
        return prefix

    def part_path(self, run: str, attempt: int, index: int) -> str:
        return self._join(f"{self._prefix(run, attempt)}.{index}.part")

    def _temp(self, run: str, attempt: int, what: str) -> str:
        return self._join(f"{self._prefix(run, attempt)}.{what}")

    def _exists_error(self) -> InvalidSpec:
        return InvalidSpec([f"write: {self.url} exists (set overwrite: true to replace it)"])

    # the steps

    def check(self) -> None:
        if self.local:
            if not os.path.isdir(self.dir):
                raise InvalidSpec([f"write: {self.url}: directory {self.dir} does not exist (create it first)"])
            if not os.access(self.dir, os.W_OK):
                raise InvalidSpec([f"write: {self.url}: directory {self.dir} is not writable"])
            if os.path.isdir(self.path):
                raise InvalidSpec([f"write: {self.url} is a directory (give a file path)"])
            if os.path.lexists(self.path) and not self.overwrite:
                raise self._exists_error()
            return
        try:
            self.fs.invalidate_cache()
            bucket = self.path.split("/")[0]
            if self.fs.protocol and set(self.fs.protocol if isinstance(self.fs.protocol, (list, tuple))
                                        else [self.fs.protocol]) & {"s3", "s3a", "gs", "gcs", "abfs", "az"}:
                if not self.fs.exists(bucket):
                    raise InvalidSpec([f"write: {self.url}: bucket {bucket} does not exist"])
            if self.fs.isdir(self.path):
                raise InvalidSpec([f"write: {self.url} is a directory (give a file path)"])
            if self.fs.exists(self.path) and not self.overwrite:
                raise self._exists_error()
        except InvalidSpec:
            raise
        except Exception as e:
            raise InvalidSpec([f"write: {self.url}: cannot reach it ({type(e).__name__}: {e})"]) from None

    def part(self, run: str, attempt: int, index: int) -> PartWriter:
        check_ids(run, attempt, index)
        path = self.part_path(run, attempt, index)
        try:
            return _LocalPart(path) if self.local else _RemotePart(self.fs, path)
        except OSError as e:
            raise SinkError(f"write: {self.url}: cannot create part {path}: {e}") from e

    def commit(self, run: str, attempt: int, parts: int) -> None:
        check_ids(run, attempt)
        paths = [self.part_path(run, attempt, i) for i in range(parts)]
        try:
            if self.local:
                self._commit_local(run, attempt, paths)
            else:
                self._commit_remote(run, attempt, paths)
        except (InvalidSpec, SinkError):
            raise
        except Exception as e:
            raise SinkError(f"write: {self.url}: commit of run {run} attempt {attempt} failed "
                            f"({type(e).__name__}: {e})") from e

    def abort(self, run: str, attempt: int, parts: int) -> None:
        check_ids(run, attempt)
        names = [self.part_path(run, attempt, i) for i in range(parts)]
        names += [self._temp(run, attempt, "concat"), self._temp(run, attempt, "ready")]
        for p in names:
            with contextlib.suppress(FileNotFoundError):
                if self.local:
                    os.unlink(p)
                else:
                    self.fs.rm(p)

    # local files

    def _missing_error(self, run: str, attempt: int, paths: list[str], missing: list[int]) -> SinkError:
        if len(missing) == len(paths):
            return SinkError(f"write: {self.url}: nothing to commit for run {run} attempt {attempt} "
                             f"(no parts such as {paths[0] if paths else '?'})")
        shown = ", ".join(str(i) for i in missing[:10]) + (" ..." if len(missing) > 10 else "")
        return SinkError(f"write: {self.url}: run {run} attempt {attempt} is missing part(s) {shown} "
                         f"of {len(paths)} (e.g. {paths[missing[0]]})")

    def _commit_local(self, run: str, attempt: int, paths: list[str]) -> None:
        ready = self._temp(run, attempt, "ready")
        if not os.path.exists(ready):
            missing = [i for i, p in enumerate(paths) if not os.path.exists(p)]
            if paths and len(missing) == len(paths) and os.path.exists(self.path):
                return                                   # committed already
            if missing:
                raise self._missing_error(run, attempt, paths, missing)
            if os.path.lexists(self.path) and not self.overwrite:
                raise self._exists_error()
            if len(paths) == 1:
                os.rename(paths[0], ready)
            else:
                concat = self._temp(run, attempt, "concat")
                with open(concat, "wb") as out:
                    for p in paths:
                        _append_file(out.fileno(), p)
                    out.flush()
                    os.fsync(out.fileno())
                os.rename(concat, ready)
            _fsync_dir(self.dir)
        for p in paths:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(p)
        self._place_local(ready)
        _fsync_dir(self.dir)

    def _place_local(self, ready: str) -> None:
        """Rename `ready` onto the target; without overwrite, never over an existing file."""
        if self.overwrite:
            os.replace(ready, self.path)
            return
        try:
            os.link(ready, self.path)
        except FileExistsError:
            if not os.path.samefile(ready, self.path):   # else: linked before, not yet unlinked
                raise self._exists_error() from None
        except OSError as e:
            if e.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EXDEV):
                raise
            if os.path.lexists(self.path):                # no hard links here: check, then rename
                raise self._exists_error() from None
            os.rename(ready, self.path)
            return
        os.unlink(ready)

    # fsspec URLs

    def _commit_remote(self, run: str, attempt: int, paths: list[str]) -> None:
        fs = self.fs
        fs.invalidate_cache()
        ready = self._temp(run, attempt, "ready")
        if not fs.exists(ready):
            infos: list[dict | None] = []
            for p in paths:
                try:
                    infos.append(fs.info(p))
                except FileNotFoundError:
                    infos.append(None)
            missing = [i for i, info in enumerate(infos) if info is None]
            if paths and len(missing) == len(paths) and fs.exists(self.path):
                return                                   # committed already
            if missing:
                raise self._missing_error(run, attempt, paths, missing)
            if fs.exists(self.path) and not self.overwrite:
                raise self._exists_error()
            sizes = [int(info.get("size") or 0) for info in infos]
            if len(paths) == 1:
                fs.mv(paths[0], ready)
            elif hasattr(fs, "merge") and all(S3_MIN_PART <= s <= S3_MAX_PART for s in sizes[:-1]) \
                    and sizes[-1] <= S3_MAX_PART:
                fs.merge(ready, paths)                   # joined in the store, no download
            else:
                with fs.open(ready, "wb") as out:
                    for p in paths:
                        with fs.open(p, "rb") as f:
                            while data := f.read(COPY_BLOCK):
                                out.write(data)
        for p in paths:
            with contextlib.suppress(FileNotFoundError):
                fs.rm(p)
        fs.invalidate_cache()
        if not self.overwrite and fs.exists(self.path):
            raise self._exists_error()
        fs.mv(ready, self.path)

"""Reading a flow's input: expanding paths and globs (local or any fsspec URL), splitting
files into chunks, and reading a chunk, a stream or a Python iterable as blocks of whole
lines (each block ends in b"\\n").

A chunk is a byte range [start, end) of one file and owns every line that STARTS in it
(the Hadoop rule): a line crossing `end` is read to its end by this chunk, and the partial
line at `start` belongs to the chunk before. So every line is read by exactly one chunk,
wherever the cuts fall. Compressed files (.gz, .bz2, .xz, .zst, ...) are one chunk each.
"""
from __future__ import annotations

import os
import select
import stat
import time
from dataclasses import dataclass
from typing import BinaryIO, Iterable, Iterator

import fsspec
from fsspec.core import url_to_fs
from fsspec.utils import infer_compression

from ...errors import InvalidSpec, SourceError, SourceNotFound
from ..iospec import MIN_CHUNK, SourceSpec

NL = b"\n"
GLOB_CHARS = ("*", "?", "[")
SPLIT_SLOP = 1.1          # the last chunk of a file may be up to 10% over the chunk size
_PROBE = 64 << 10         # bytes read to find the end of a line near a cut
STREAM_MIN_BLOCK = 1 << 20  # from a pipe: wait briefly for this much before passing a block on
STREAM_WAIT_S = 0.01
# compressions fsspec reads only with an extra package: never split such files as text
_NEEDS_PACKAGE = {"zst": "zstandard", "zstd": "zstandard", "lz4": "lz4", "sz": "python-snappy",
                  "snappy": "python-snappy"}


@dataclass(frozen=True)
class Chunk:
    """Byte range [start, end) of the file at `url`; end None: the whole (compressed) file."""
    url: str
    start: int
    end: int | None


# -- expanding --------------------------------------------------------------------------

def _is_local(url: str) -> bool:
    return "://" not in url or url.startswith("file://")


def _fs(url: str, storage_options: dict | None):
    """(filesystem, path) for a URL or local path; InvalidSpec when fsspec cannot serve it."""
    if _is_local(url):
        url = os.path.abspath(os.path.expanduser(url.removeprefix("file://")))
        storage_options = None
    try:
        return url_to_fs(url, **(storage_options or {}))
    except ImportError as e:
        raise InvalidSpec([f"read: {url}: {e} (install the package for this protocol, e.g. s3fs for s3://)"])
    except (ValueError, TypeError) as e:
        raise InvalidSpec([f"read: {url}: {e}"])


def _listing(patterns: list[str], storage_options: dict | None) -> list[tuple[str, int]]:
    """(url, size) of every file the patterns name, in pattern order, each pattern's
    matches sorted, each file once."""
    seen: set[str] = set()
    out: list[tuple[str, int]] = []
    missing: list[str] = []
    for pattern in patterns:
        fs, path = _fs(pattern, storage_options)
        local = _is_local(pattern)
        try:
            if any(c in path for c in GLOB_CHARS):
                found = fs.glob(path, detail=True)
                files = {p: i for p, i in found.items() if i.get("type") == "file"}
            else:
                info = fs.info(path)
                if info.get("type") == "directory":
                    files = {i["name"]: i for i in fs.ls(path, detail=True)
                             if i.get("type") == "file" and not os.path.basename(i["name"]).startswith((".", "_"))}
                else:
                    files = {path: info}
        except FileNotFoundError:
            files = {}
        except Exception as e:
            raise InvalidSpec([f"read: cannot list {pattern} ({type(e).__name__}: {e})"]) from None
        if not files:
            missing.append(pattern)
            continue
        for p in sorted(files):
            url = p if local else fs.unstrip_protocol(p)
            if url not in seen:
                seen.add(url)
                out.append((url, int(files[p].get("size") or 0)))
    if missing:
        raise SourceNotFound([f"read: {p} matched no files" for p in missing])
    return out


def expand(patterns: list[str], storage_options: dict | None = None) -> list[str]:
    """Every file the paths, globs and URLs name: in pattern order, each pattern's matches
    sorted, each file once. Local files come back as absolute paths, others as URLs. A
    directory stands for the files directly in it (names starting with '.' or '_' skipped).
    SourceNotFound names every pattern that matched nothing."""
    return [url for url, _ in _listing(patterns, storage_options)]


def plan_chunks(spec: SourceSpec) -> list[Chunk]:
    """The chunks of a file source, about spec.chunk bytes each, in file order. Empty files
    have none; compressed files are one chunk each. Stdin and iterable sources have none."""
    if not spec.paths:
        return []
    chunks: list[Chunk] = []
    listing = _listing(spec.paths, spec.storage_options)
    unreadable = [(url, _NEEDS_PACKAGE[url.rsplit(".", 1)[-1].lower()]) for url, _ in listing
                  if not infer_compression(url) and url.rsplit(".", 1)[-1].lower() in _NEEDS_PACKAGE]
    if unreadable:
        raise InvalidSpec([f"read: {url} is compressed; install {pkg} to read it" for url, pkg in unreadable])
    for url, size in listing:
        if infer_compression(url):
            chunks.append(Chunk(url, 0, None))
            continue
        start = 0
        while size - start > spec.chunk * SPLIT_SLOP:
            chunks.append(Chunk(url, start, start + spec.chunk))
            start += spec.chunk
        if size > start:
            chunks.append(Chunk(url, start, size))
    return chunks


# -- reading ------------------------------------------------------------------------------

def plan_pieces(spec: SourceSpec, at_least: int) -> list[Chunk]:
    """plan_chunks, with chunks cut smaller when there would be fewer than `at_least`
    (so parallel readers, or a sample, have enough pieces to spread over)."""
    chunks = plan_chunks(spec)
    if len(chunks) < at_least:
        total = sum((c.end or 0) - c.start for c in chunks)
        smaller = max(MIN_CHUNK, total // at_least)
        if total and smaller < spec.chunk:
            chunks = plan_chunks(spec.model_copy(update={"chunk": smaller}))
    return chunks


def read_chunk(chunk: Chunk, storage_options: dict | None = None, block_bytes: int = 8 << 20) -> Iterator[bytes]:
    """The lines of a chunk, as blocks of about block_bytes of whole lines, each ending in
    b"\\n" (one is added after a last line without it)."""
    try:
        if chunk.end is None:
            options = {} if _is_local(chunk.url) else (storage_options or {})
            with fsspec.open(chunk.url, "rb", compression="infer", **options) as f:
                yield from read_stream(f, block_bytes)
        elif _is_local(chunk.url):
            yield from _read_local(chunk.url.removeprefix("file://"), chunk.start, chunk.end, block_bytes)
        else:
            fs, path = _fs(chunk.url, storage_options)
            with fs.open(path, "rb") as f:
                yield from _read_sequential(f, chunk.start, chunk.end, block_bytes)
    except (OSError, EOFError, ValueError) as e:
        raise SourceError(f"read: {chunk.url}: {e}") from e


def _next_newline(fd: int, at: int) -> int:
    """Offset of the first b"\\n" at or after `at`, or -1 at end of file."""
    probe = _PROBE
    while True:
        data = os.pread(fd, probe, at)
        if not data:
            return -1
        i = data.find(NL)
        if i >= 0:
            return at + i
        at += len(data)
        probe = min(probe * 2, 8 << 20)


def _pread_exact(fd: int, n: int, pos: int) -> bytes:
    data = os.pread(fd, n, pos)
    if len(data) == n or not data:
        return data
    parts = [data]
    got = len(data)
    while got < n:
        more = os.pread(fd, n - got, pos + got)
        if not more:
            break
        parts.append(more)
        got += len(more)
    return b"".join(parts)


def _read_local(path: str, start: int, end: int, block_bytes: int) -> Iterator[bytes]:
    """Local files: each block is one pread cut at a line end found by a small probe, so
    no byte is copied twice in Python."""
    fd = os.open(path, os.O_RDONLY)
    try:
        if start > 0:
            nl = _next_newline(fd, start - 1)
            if nl < 0:
                return
            start = nl + 1
        if start >= end:
            return
        nl = _next_newline(fd, end - 1)
        stop = nl + 1 if nl >= 0 else os.fstat(fd).st_size
        if hasattr(os, "posix_fadvise"):
            os.posix_fadvise(fd, start, stop - start, os.POSIX_FADV_SEQUENTIAL)
        pos = start
        while pos < stop:
            n = stop - pos
            if n > block_bytes:
                cut = _next_newline(fd, pos + block_bytes - 1)
                n = (cut + 1 if 0 <= cut < stop else stop) - pos
            data = _pread_exact(fd, n, pos)
            if not data:
                return
            pos += len(data)
            yield data if data.endswith(NL) else data + NL
    finally:
        os.close(fd)


def _read_sequential(f: BinaryIO, start: int, end: int, block_bytes: int) -> Iterator[bytes]:
    """Any seekable file object (remote files): the same rule, read front to back."""
    buf = b""
    if start > 0:
        f.seek(start - 1)
        while True:
            data = f.read(_PROBE)
            if not data:
                return
            i = data.find(NL)
            if i >= 0:
                start += i
                buf = data[i + 1:]
                break
            start += len(data)
    if start >= end:
        return
    off = start            # offset of buf[0]
    carry: list[bytes] = []
    while True:
        if not buf:
            buf = f.read(block_bytes)
            if not buf:
                break
        if off + len(buf) > end - 1:        # buf holds the last byte we own: cut at the line end
            i = buf.find(NL, max(0, end - 1 - off))
            if i >= 0:
                carry.append(buf[:i + 1])
                yield b"".join(carry)
                return
            carry.append(buf)
        else:
            k = buf.rfind(NL)
            if k >= 0:
                carry.append(buf[:k + 1])
                yield b"".join(carry)
                carry = [buf[k + 1:]] if k + 1 < len(buf) else []
            else:
                carry.append(buf)
        off += len(buf)
        buf = b""
    tail = b"".join(carry)
    if tail:
        yield tail if tail.endswith(NL) else tail + NL


def _pieces(f: BinaryIO, block_bytes: int) -> Iterator[bytes]:
    """Raw reads of a stream. From a pipe or socket, what has arrived is passed on within
    STREAM_WAIT_S, coalesced while more keeps coming (up to block_bytes), so a slow
    producer is not held back and a fast one still gives large blocks."""
    try:
        fd = f.fileno()
        regular = stat.S_ISREG(os.fstat(fd).st_mode)
    except (AttributeError, OSError, ValueError):
        fd, regular = -1, True
    readinto = getattr(f, "readinto1", None) or getattr(f, "readinto", None)
    if regular or readinto is None:
        while data := f.read(block_bytes):
            yield data
        return
    buf = memoryview(bytearray(block_bytes))
    poll = select.poll()
    poll.register(fd, select.POLLIN)
    enough = min(block_bytes, STREAM_MIN_BLOCK)
    while True:
        n, began, eof = 0, 0.0, False
        while n < block_bytes:
            got = readinto(buf[n:])
            if not got:
                eof = True
                break
            if n == 0:
                began = time.monotonic()
            n += got
            if poll.poll(0):
                continue
            if n >= enough:
                break
            left = began + STREAM_WAIT_S - time.monotonic()
            if left <= 0 or not poll.poll(left * 1000):
                break
        if n:
            yield bytes(buf[:n])
        if eof:
            return


def read_stream(f: BinaryIO, block_bytes: int = 8 << 20) -> Iterator[bytes]:
    """The lines of a stream (stdin, a decompressing reader, ...) as blocks of whole
    lines, each ending in b"\\n"."""
    carry: list[bytes] = []
    for data in _pieces(f, block_bytes):
        k = data.rfind(NL)
        if k < 0:
            carry.append(data)
            continue
        if k + 1 == len(data):
            carry.append(data)
            rest = []
        else:
            carry.append(data[:k + 1])
            rest = [data[k + 1:]]
        yield carry[0] if len(carry) == 1 else b"".join(carry)
        carry = rest
    tail = b"".join(carry)
    if tail:
        yield tail + NL


def iterable_blocks(items: Iterable, sep: str = "\t", block_records: int = 65536) -> Iterator[bytes]:
    """Records from Python as blocks of at most block_records lines. An item is a str (one
    line; a trailing newline is not doubled), bytes (the same), or a tuple or list of
    fields, each str()-ed and joined by `sep`. InvalidSpec names an item that cannot be a
    record: a field holding `sep` or a newline, a line holding a newline, another type."""
    lines: list[bytes] = []
    for i, item in enumerate(items):
        if isinstance(item, str):
            line = item[:-1] if item.endswith("\n") else item
            if "\n" in line:
                raise InvalidSpec([f"items[{i}]: a line cannot hold a newline inside it (got {item[:200]!r})"])
            lines.append(line.encode())
        elif isinstance(item, (bytes, bytearray, memoryview)):
            line = bytes(item)
            line = line[:-1] if line.endswith(NL) else line
            if NL in line:
                raise InvalidSpec([f"items[{i}]: a line cannot hold a newline inside it (got {line[:200]!r})"])
            lines.append(line)
        elif isinstance(item, (tuple, list)):
            fields = [f if isinstance(f, str) else str(f) for f in item]
            line = sep.join(fields)
            if "\n" in line or (fields and line.count(sep) != len(fields) - 1):
                j, bad = next((j, f) for j, f in enumerate(fields) if sep in f or "\n" in f)
                what = "a newline" if "\n" in bad else f"the separator {sep!r}"
                raise InvalidSpec([f"items[{i}]: field {j + 1} holds {what} (got {bad[:200]!r})"])
            lines.append(line.encode())
        else:
            raise InvalidSpec([f"items[{i}]: expected a str line, bytes, or a tuple or list of fields "
                               f"(got {type(item).__name__})"])
        if len(lines) >= block_records:
            lines.append(b"")
            yield NL.join(lines)
            lines = []
    if lines:
        lines.append(b"")
        yield NL.join(lines)

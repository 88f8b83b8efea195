"""Inputs for bench/flows.py, generated with numpy from a fixed seed and cached.

  zipf text   lines of 8-16 words separated by single spaces; the words are drawn from a
              Zipf distribution (s = 1.1) over a vocabulary of 500,000 distinct lowercase
              words of 3-12 letters (English letter frequencies; frequent words are short)
  sort TSV    lines `key<TAB>payload`: a random 12-char [a-z0-9] key and a payload of
              60-90 printable ASCII characters (space to `~`, never a tab)

Files live in $SHOAL_BENCH_DATA (default bench/.data/) as zipf-<SIZE>.txt and
sort-<SIZE>.tsv, each with a <file>.json beside it saying how it was made; a file whose
record does not match what is asked for is made again. Sizes are in bytes, K/M/G being
powers of 1024; a file is at most that size and within one line of it.

Run: python bench/flowdata.py [--size 200M] [zipf|sort ...]   (prints each file's path)
"""
from __future__ import annotations

import argparse
import itertools
import json
import os
import re
import sys
import time
from pathlib import Path

import numpy as np

VERSION = 1                 # bump when the bytes a seed produces change
VOCAB = 500_000             # distinct words
ZIPF_S = 1.1
WORD_LEN = (3, 12)
LINE_WORDS = (8, 16)
KEY_LEN = 12
PAYLOAD_LEN = (60, 90)
ZIPF_SEED = 1
SORT_SEED = 2

ROW = 16                                    # a word and its separator fit in 16 bytes
KEY_CHARS = b"abcdefghijklmnopqrstuvwxyz0123456789"
PAYLOAD_CHARS = bytes(range(0x20, 0x7F))    # printable ASCII, space included, no tab
# relative frequency of a..z in English text
LETTER_FREQ = [8.2, 1.5, 2.8, 4.3, 12.7, 2.2, 2.0, 6.1, 7.0, 0.15, 0.77, 4.0, 2.4,
               6.7, 7.5, 1.9, 0.095, 6.0, 6.3, 9.1, 2.8, 0.98, 2.4, 0.15, 2.0, 0.074]
# share of each word length 3..12 among the vocabulary's words
LENGTH_SHARE = [4, 9, 13, 15, 15, 13, 11, 9, 6, 5]

_TABLE_BITS = 22            # inverse-CDF lookup table for the Zipf draw: 2**22 buckets
_LINES_PER_CHUNK = 400_000
_SORT_LINES_PER_CHUNK = 500_000
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMG]?)(?:i?B)?\s*$", re.IGNORECASE)


def parse_size(text: str) -> int:
    """'200M' -> bytes; K, M, G are powers of 1024; a bare number is bytes."""
    m = _SIZE.match(str(text))
    if not m:
        raise ValueError(f"size: expected a number with an optional K, M or G suffix, like 200M or 1G "
                         f"(got {text!r})")
    n = int(float(m.group(1)) * 1024 ** " KMG".index(m.group(2).upper() or " "))
    if n <= 0:
        raise ValueError(f"size: must be more than 0 bytes (got {text!r})")
    return n


def size_label(n: int) -> str:
    """bytes -> the shortest exact label: 1073741824 -> '1G', 1000 -> '1000'."""
    for unit, mult in (("G", 1024 ** 3), ("M", 1024 ** 2), ("K", 1024)):
        if n % mult == 0:
            return f"{n // mult}{unit}"
    return str(n)


def data_dir() -> Path:
    """Where inputs are cached: $SHOAL_BENCH_DATA or bench/.data/."""
    env = os.environ.get("SHOAL_BENCH_DATA")
    return Path(env) if env else Path(__file__).resolve().parent / ".data"


# -- zipf text -------------------------------------------------------------------------------

def zipf_vocabulary(seed: int = ZIPF_SEED, n: int = VOCAB) -> tuple[np.ndarray, np.ndarray]:
    """The vocabulary in rank order (most frequent first): a (n, 16) uint8 array whose row
    holds the word followed by a space (the rest is padding), and the words' lengths."""
    rng = np.random.default_rng([seed, 0])
    lo, hi = WORD_LEN
    share = np.array(LENGTH_SHARE, float) / sum(LENGTH_SHARE)
    letter_cdf = np.cumsum(LETTER_FREQ) / sum(LETTER_FREQ)
    words = np.empty((0, ROW), np.uint8)
    want = n
    while True:
        # short lengths have few distinct words: draw extra, keep the distinct ones
        m = int(want * 1.25) + 1000
        lens = rng.choice(np.arange(lo, hi + 1), size=m, p=share)
        letters = np.searchsorted(letter_cdf, rng.random((m, hi)) * letter_cdf[-1]).astype(np.uint8) + ord("a")
        rows = np.zeros((m, ROW), np.uint8)
        rows[:, :hi] = letters
        rows[np.arange(ROW) >= lens[:, None]] = 0
        words = np.unique(np.concatenate([words, rows]).view(f"V{ROW}").ravel()).view(np.uint8).reshape(-1, ROW)
        if len(words) >= n:
            break
        want = n - len(words)
    words = words[rng.permutation(len(words))[:n]]
    lens = (words != 0).sum(axis=1)
    # frequent words tend to be short, as in real text
    order = np.argsort(lens + rng.normal(0.0, 2.0, n), kind="stable")
    words, lens = words[order], lens[order]
    words[np.arange(n), lens] = ord(" ")
    return np.ascontiguousarray(words), lens.astype(np.int64)


def _zipf_table(n: int, s: float) -> tuple[np.ndarray, np.ndarray]:
    """(cdf over ranks 0..n-1, table[b] = first rank whose cdf reaches b / 2**bits)."""
    p = np.arange(1, n + 1, dtype=np.float64) ** -s
    cdf = np.cumsum(p)
    cdf /= cdf[-1]
    table = np.searchsorted(cdf, np.arange((1 << _TABLE_BITS) + 1) / (1 << _TABLE_BITS)).astype(np.int32)
    return cdf, np.minimum(table, n - 1)


def zipf_ranks(rng: np.random.Generator, count: int, cdf: np.ndarray, table: np.ndarray) -> np.ndarray:
    """`count` ranks (0 = most frequent) drawn by inverse CDF: a table lookup settles most
    draws; the rest (a bucket spanning several ranks) are searched exactly."""
    r = np.frombuffer(rng.bytes(4 * count), np.uint32)
    b = r >> (32 - _TABLE_BITS)
    ranks = table[b]
    open_ = np.flatnonzero(ranks != table[b + 1])
    ranks[open_] = np.minimum(np.searchsorted(cdf, r[open_] * (1.0 / 2 ** 32), side="right"), len(cdf) - 1)
    return ranks


def zipf_chunk(index: int, seed: int, vocab: np.ndarray, lens: np.ndarray, cdf: np.ndarray,
               table: np.ndarray, lines: int = _LINES_PER_CHUNK) -> bytes:
    """Chunk `index` of the text: `lines` whole lines, the same bytes for the same seed."""
    rng = np.random.default_rng([seed, 1, index])
    per_line = rng.integers(LINE_WORDS[0], LINE_WORDS[1] + 1, lines)
    total = int(per_line.sum())
    ids = zipf_ranks(rng, total, cdf, table)
    rows = vocab.view(f"V{ROW}").ravel()[ids].view(np.uint8).reshape(total, ROW)
    wl = lens[ids]
    last = np.cumsum(per_line) - 1
    rows[last, wl[last]] = ord("\n")
    masks = (np.arange(ROW) <= np.arange(ROW)[:, None]).view(f"V{ROW}").ravel()  # row L: bytes 0..L
    keep = masks[wl].view(np.bool_).reshape(total, ROW)
    return rows[keep].tobytes()


def write_zipf_text(path: Path, size: int, seed: int = ZIPF_SEED) -> dict:
    """Write the Zipf text (at most `size` bytes, whole lines); what was written."""
    vocab, lens = zipf_vocabulary(seed)
    cdf, table = _zipf_table(len(vocab), ZIPF_S)
    return _write_chunks(path, size, lambda i: zipf_chunk(i, seed, vocab, lens, cdf, table),
                         count_words=True)


# -- sort TSV -------------------------------------------------------------------------------

def sort_chunk(index: int, seed: int, lines: int = _SORT_LINES_PER_CHUNK) -> bytes:
    """Chunk `index` of the sort input: `lines` lines of key<TAB>payload."""
    rng = np.random.default_rng([seed, 2, index])
    lo, hi = PAYLOAD_LEN
    width = KEY_LEN + 1 + hi + 1
    keys = np.frombuffer(KEY_CHARS, np.uint8)
    chars = np.frombuffer(PAYLOAD_CHARS, np.uint8)
    rows = np.empty((lines, width), np.uint8)
    rows[:, :KEY_LEN] = keys[rng.integers(0, len(keys), (lines, KEY_LEN), dtype=np.uint8)]
    rows[:, KEY_LEN] = ord("\t")
    rows[:, KEY_LEN + 1:] = chars[rng.integers(0, len(chars), (lines, hi + 1), dtype=np.uint8)]
    plen = rng.integers(lo, hi + 1, lines)
    end = KEY_LEN + 1 + plen
    rows[np.arange(lines), end] = ord("\n")
    return rows[np.arange(width) <= end[:, None]].tobytes()


def write_sort_tsv(path: Path, size: int, seed: int = SORT_SEED) -> dict:
    """Write the sort input (at most `size` bytes, whole lines); what was written."""
    return _write_chunks(path, size, lambda i: sort_chunk(i, seed))


# -- files and cache ----------------------------------------------------------------------

def _write_chunks(path: Path, size: int, chunk, count_words: bool = False) -> dict:
    """Append chunk(0), chunk(1), ... to a temporary file until `size` bytes, cutting the
    last one after its last whole line that fits; then rename it into place."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    written = lines = words = 0
    t0 = time.perf_counter()
    try:
        with open(tmp, "wb") as f:
            for i in itertools.count():
                data = chunk(i)
                whole = len(data) <= size - written
                if not whole:
                    data = data[:data.rfind(b"\n", 0, size - written) + 1]
                f.write(data)
                written += len(data)
                lines += data.count(b"\n")
                if count_words:
                    words += data.count(b" ") + data.count(b"\n")
                if not whole or written >= size:
                    break
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    out = {"bytes": written, "lines": lines, "seconds": round(time.perf_counter() - t0, 2)}
    if count_words:
        out["words"] = words
    return out


def _ensure(kind: str, size: int, seed: int, name: str, write, data: Path | None, quiet: bool,
            out=None) -> tuple[Path, dict]:
    path = (data or data_dir()) / name
    meta_path = path.with_name(path.name + ".json")
    want = {"kind": kind, "size": size, "seed": seed, "version": VERSION}
    try:
        meta = json.loads(meta_path.read_text())
        if {k: meta.get(k) for k in want} == want and path.stat().st_size == meta["bytes"]:
            return path, meta
    except (OSError, ValueError, KeyError):
        pass
    if not quiet:
        print(f"generating {path} ({size / 1e6:,.0f} MB, seed {seed}) ...", file=out or sys.stdout, flush=True)
    meta = {**want, **write(path, size, seed)}
    meta_path.write_text(json.dumps(meta, indent=1) + "\n")
    if not quiet:
        print(f"  {meta['bytes'] / 1e6:,.0f} MB, {meta['lines']:,} lines in {meta['seconds']:.1f}s "
              f"({meta['bytes'] / 1e6 / max(meta['seconds'], 1e-9):,.0f} MB/s)", file=out or sys.stdout, flush=True)
    return path, meta


def ensure_zipf_text(size: int, data: Path | None = None, seed: int = ZIPF_SEED,
                     quiet: bool = False, out=None) -> tuple[Path, dict]:
    """The cached Zipf text of `size` bytes (made if missing or stale): (path, its record).
    Progress goes to `out` (default stdout) unless quiet."""
    return _ensure("zipf", size, seed, f"zipf-{size_label(size)}.txt", write_zipf_text, data, quiet, out)


def ensure_sort_tsv(size: int, data: Path | None = None, seed: int = SORT_SEED,
                    quiet: bool = False, out=None) -> tuple[Path, dict]:
    """The cached sort input of `size` bytes (made if missing or stale): (path, its record).
    Progress goes to `out` (default stdout) unless quiet."""
    return _ensure("sort", size, seed, f"sort-{size_label(size)}.tsv", write_sort_tsv, data, quiet, out)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("kinds", nargs="*", metavar="zipf|sort", help="which inputs (default both)")
    ap.add_argument("--size", default="1G", help="bytes per file: 200M, 1G, ... (default 1G)")
    args = ap.parse_args()
    try:
        size = parse_size(args.size)
    except ValueError as e:
        ap.error(str(e))
    bad = [k for k in args.kinds if k not in ("zipf", "sort")]
    if bad:
        ap.error(f"unknown input {bad[0]!r}: expected zipf or sort")
    for kind in args.kinds or ["zipf", "sort"]:
        path, _ = (ensure_zipf_text if kind == "zipf" else ensure_sort_tsv)(size)
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""bench/flowdata.py makes the inputs bench/flows.py promises, and bench/flows.py checks
the peers' answers the way it says (run for real on small inputs, without shoal)."""
from __future__ import annotations

import collections
import hashlib
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

BENCH = Path(__file__).resolve().parent.parent / "bench"
sys.path.insert(0, str(BENCH))
import flowdata  # noqa: E402
import flows  # noqa: E402

WORD = re.compile(rb"[a-z]{3,12}")
KEY = re.compile(rb"[a-z0-9]{12}")


# -- sizes ---------------------------------------------------------------------------------

def test_parse_size_units_are_powers_of_1024():
    assert flowdata.parse_size("200M") == 200 * 1024 ** 2
    assert flowdata.parse_size("1G") == 1024 ** 3
    assert flowdata.parse_size("1.5k") == 1536
    assert flowdata.parse_size("4096") == 4096
    assert flowdata.parse_size("2GiB") == 2 * 1024 ** 3


@pytest.mark.parametrize("bad", ["", "G", "-1M", "0", "1T", "ten"])
def test_parse_size_refuses_what_it_cannot_read(bad):
    with pytest.raises(ValueError, match="size"):
        flowdata.parse_size(bad)


@given(st.integers(min_value=1, max_value=1 << 40))
def test_size_label_reads_back_as_the_same_size(n):
    assert flowdata.parse_size(flowdata.size_label(n)) == n


# -- zipf text -------------------------------------------------------------------------------

def test_zipf_text_is_lines_of_8_to_16_words_and_at_most_the_size(tmp_path):
    size = 3 * 1024 ** 2 + 17
    path, meta = flowdata.ensure_zipf_text(size, tmp_path, quiet=True)
    data = path.read_bytes()
    assert len(data) <= size and len(data) > size - 16 * 13
    assert data.endswith(b"\n")
    lines = data.split(b"\n")[:-1]
    words = 0
    for line in lines:
        ws = line.split(b" ")
        assert 8 <= len(ws) <= 16, line
        assert all(WORD.fullmatch(w) for w in ws), line
        words += len(ws)
    assert meta["bytes"] == len(data) and meta["lines"] == len(lines) and meta["words"] == words


def test_zipf_text_is_the_same_for_a_seed_and_a_smaller_file_is_a_prefix(tmp_path):
    a = flowdata.ensure_zipf_text(2_000_000, tmp_path / "a", quiet=True)[0].read_bytes()
    b = flowdata.ensure_zipf_text(2_000_000, tmp_path / "b", quiet=True)[0].read_bytes()
    small = flowdata.ensure_zipf_text(300_000, tmp_path / "a", quiet=True)[0].read_bytes()
    other = flowdata.ensure_zipf_text(300_000, tmp_path / "c", seed=7, quiet=True)[0].read_bytes()
    assert a == b
    assert a.startswith(small)
    assert other != small


def test_vocabulary_is_500k_distinct_words_of_3_to_12_letters_frequent_ones_short():
    rows, lens = flowdata.zipf_vocabulary()
    assert rows.shape == (flowdata.VOCAB, 16)
    words = [bytes(r[:n]) for r, n in zip(rows, lens)]
    assert len(set(words)) == flowdata.VOCAB
    assert all(WORD.fullmatch(w) for w in words[::97])
    assert all(rows[i, lens[i]] == ord(" ") for i in range(0, flowdata.VOCAB, 101))
    assert lens[:100].mean() < lens[-100_000:].mean()


def test_word_frequencies_follow_zipf_with_s_1_1():
    cdf, table = flowdata._zipf_table(flowdata.VOCAB, flowdata.ZIPF_S)
    ranks = flowdata.zipf_ranks(np.random.default_rng(5), 2_000_000, cdf, table)
    counts = np.bincount(ranks, minlength=flowdata.VOCAB)
    p = np.arange(1, flowdata.VOCAB + 1, dtype=float) ** -flowdata.ZIPF_S
    p /= p.sum()
    for r in (0, 1, 9, 99):
        assert abs(counts[r] / 2_000_000 - p[r]) < 5 * np.sqrt(p[r] / 2_000_000) + 1e-6, r
    assert counts[0] / counts[9] == pytest.approx(10 ** flowdata.ZIPF_S, rel=0.05)
    assert ranks.max() < flowdata.VOCAB and ranks.min() >= 0


# -- sort TSV ---------------------------------------------------------------------------------

def test_sort_tsv_lines_are_key_tab_payload(tmp_path):
    size = 1024 ** 2
    path, meta = flowdata.ensure_sort_tsv(size, tmp_path, quiet=True)
    data = path.read_bytes()
    assert len(data) <= size and data.endswith(b"\n")
    lines = data.split(b"\n")[:-1]
    keys = set()
    for line in lines:
        key, payload = line.split(b"\t")          # exactly one tab
        assert KEY.fullmatch(key)
        assert 60 <= len(payload) <= 90
        assert all(0x20 <= c <= 0x7E for c in payload)
        keys.add(key)
    assert len(keys) == len(lines) == meta["lines"]
    assert flowdata.ensure_sort_tsv(size, tmp_path / "again", quiet=True)[0].read_bytes() == data


def test_a_cached_input_is_reused_and_a_damaged_one_made_again(tmp_path):
    path, meta = flowdata.ensure_sort_tsv(200_000, tmp_path, quiet=True)
    first = path.stat().st_mtime_ns
    assert flowdata.ensure_sort_tsv(200_000, tmp_path, quiet=True) == (path, meta)
    assert path.stat().st_mtime_ns == first
    with open(path, "r+b") as f:
        f.truncate(1000)
    path2, meta2 = flowdata.ensure_sort_tsv(200_000, tmp_path, quiet=True)
    assert path2 == path and path.stat().st_size == meta["bytes"] == meta2["bytes"]


def test_the_data_directory_comes_from_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("SHOAL_BENCH_DATA", str(tmp_path / "cache"))
    path, _ = flowdata.ensure_zipf_text(100_000, quiet=True)
    assert path == tmp_path / "cache" / "zipf-100000.txt"
    assert (tmp_path / "cache" / "zipf-100000.txt.json").exists()
    assert not list((tmp_path / "cache").glob("*.tmp*"))


# -- checks in flows.py --------------------------------------------------------------------------

def test_top_lists_are_read_in_every_tool_format():
    assert flows.parse_top("   5245678 bsm\n 2443454 hhf\n") == [("bsm", 5245678), ("hhf", 2443454)]
    assert flows.parse_top("5245678\tbsm\n") == [("bsm", 5245678)]
    assert flows.parse_top("bsm\t5245678\nhhf\t2443454\n") == [("bsm", 5245678), ("hhf", 2443454)]


def test_top_lists_agree_when_only_words_tied_at_the_last_place_differ():
    want = [("a", 9), ("b", 7), ("c", 5), ("d", 5)]
    assert flows.compare_top([("b", 7), ("a", 9), ("e", 5), ("c", 5)], want) is None
    assert "counts" in flows.compare_top([("a", 9), ("b", 7), ("c", 5), ("d", 4)], want)
    assert "words" in flows.compare_top([("a", 9), ("x", 7), ("c", 5), ("d", 5)], want)


def test_a_sort_output_of_the_wrong_size_or_keys_is_a_mismatch():
    ref = {"out_bytes": 100, "keys_md5": "k", "md5": "m"}
    assert flows.check_sort({"out_bytes": 100, "keys_md5": "k", "md5": "x"}, 100, ref) is None
    assert "bytes" in flows.check_sort({"out_bytes": 99, "keys_md5": "k", "md5": "m"}, 100, ref)
    assert "key column" in flows.check_sort({"out_bytes": 100, "keys_md5": "j", "md5": "m"}, 100, ref)


def test_a_wrong_answer_is_marked_and_a_failed_run_is_not_checked():
    top = [(f"w{i}", 100 - i) for i in range(10)]
    tools = {"shoal": {"seconds": 1.0, "top": top[:3] + [("zz", 97)] + top[4:]},
             "mawk": {"seconds": 2.0, "error": "mawk: exited 2", "top": []},
             "polars": {"seconds": 1.0, "top": list(reversed(top))}}
    assert flows.verify("wordcount", tools, {}) == "polars"
    assert tools["shoal"]["check"].startswith("MISMATCH with polars")
    assert tools["polars"]["check"] == "ok" and "check" not in tools["mawk"]
    meta = {"bytes": 100, "size": 100}
    sort = {"shoal": {"seconds": 1.0, "out_bytes": 100, "keys_md5": "a", "md5": "x"},
            "coreutils": {"seconds": 2.0, "out_bytes": 100, "keys_md5": "b", "md5": "y"}}
    flows.verify("sort", sort, meta)
    assert sort["shoal"]["check"] == "MISMATCH: key column differs from coreutils'"
    assert flows.target_for("sort", sort, meta)["pass"] is False
    assert flows.target_for("wordcount", tools, {"bytes": 1024 ** 3, "size": 1024 ** 3})["pass"] is False


def test_targets_pass_on_time_and_fail_when_late():
    gib = {"bytes": 1024 ** 3, "size": 1024 ** 3}
    ok = {"seconds": 11.5, "check": "ok"}
    assert flows.target_for("wordcount", {"shoal": ok}, gib)["pass"] is True
    assert flows.target_for("wordcount", {"shoal": {**ok, "seconds": 12.5}}, gib)["pass"] is False
    half = {"bytes": 512 * 1024 ** 2, "size": 512 * 1024 ** 2}
    assert flows.target_for("wordcount", {"shoal": {**ok, "seconds": 5.9}}, half)["pass"] is True
    assert flows.target_for("wordcount", {"shoal": {"skipped": "--skip-shoal"}}, gib)["pass"] is None
    assert flows.target_for("sort", {"shoal": ok, "coreutils": {"seconds": 12.0}}, gib)["pass"] is True
    assert flows.target_for("sort", {"shoal": ok, "coreutils": {"seconds": 11.0}}, gib)["pass"] is False


def test_peers_run_and_agree_on_small_inputs(tmp_path):
    """The whole bench without shoal at 1 MB: every peer's answer checks out against a
    plain Python count and sort of the same input."""
    peers = ",".join(p for p in ("coreutils", "mawk", "polars") if flows.missing_peer(p) is None)
    proc = subprocess.run([sys.executable, str(BENCH / "flows.py"), "--size", "1M", "--skip-shoal",
                           "--peers", peers, "--data", str(tmp_path), "--json"],
                          capture_output=True, text=True, timeout=600, env={**os.environ, "TMPDIR": str(tmp_path)})
    assert proc.returncode == 0, proc.stderr
    res = json.loads(proc.stdout)
    assert "load average" in proc.stderr and "MISMATCH" not in proc.stderr

    text = (tmp_path / "zipf-1M.txt").read_bytes()
    counts = collections.Counter(text.decode().split())
    tenth = sorted(counts.values(), reverse=True)[9]
    wc = res["wordcount"]["tools"]
    assert wc["shoal"] == {"skipped": "--skip-shoal"}
    for name in peers.split(","):
        t = wc[name]
        assert t["check"] == "ok" and t["seconds"] > 0 and t["mb_s"] > 0, (name, t)
        assert all(counts[w] == n for w, n in t["top"])
        assert sorted(n for _, n in t["top"]) == sorted(counts.values())[-10:]
        assert min(n for _, n in t["top"]) == tenth

    rows = (tmp_path / "sort-1M.tsv").read_bytes()
    srt = res["sort"]["tools"]
    for name in ("coreutils", "polars"):
        if name in peers.split(","):
            assert srt[name]["check"] == "ok" and srt[name]["out_bytes"] == len(rows), srt[name]
    if "polars" in srt:
        assert srt["polars"]["same_bytes_as_coreutils"] is True
    want = b"".join(sorted(rows.splitlines(keepends=True), key=lambda ln: ln.split(b"\t")[0]))
    for name in ("coreutils", "polars"):
        if name in srt:
            assert srt[name]["md5"] == hashlib.md5(want).hexdigest(), name
    assert not [p for p in tmp_path.iterdir() if p.name.startswith("shoal-bench-flows-out-")]


@settings(max_examples=50, deadline=None)
@given(st.dictionaries(st.text("abcdef", min_size=1, max_size=3), st.integers(1, 5), min_size=10, max_size=30))
def test_any_valid_top_10_agrees_with_any_other(freq):
    """Two tools may pick different words among those tied at the 10th count."""
    one = sorted(freq.items(), key=lambda x: (-x[1], x[0]))[:10]
    two = sorted(freq.items(), key=lambda x: (-x[1], x[0][::-1]), reverse=False)[:10]
    assert flows.compare_top(list(reversed(two)), one) is None
    if len(freq) > 10 and one[-1][1] > sorted(freq.values())[-11]:
        # the 11th word has fewer: swapping it in is a mismatch
        eleventh = sorted(freq.items(), key=lambda x: (-x[1], x[0]))[10]
        assert flows.compare_top(one[:-1] + [eleventh], one) is not None

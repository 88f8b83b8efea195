"""GNU-parallel style command templates: {} is the input, {1} {2} the n-th input source,
{.} the input without extension, {/} its basename, {//} its dirname, {/.} both, {#} the job
number. With no placeholder the input is appended as the last argument."""
from __future__ import annotations

import itertools
import os
import re
import shlex

_PH = re.compile(r"\{(\d*)(\.|/\.|/|//|#)?\}")


def has_placeholder(template: str) -> bool:
    return bool(_PH.search(template))


def _render(m: re.Match, args: tuple[str, ...], seq: int) -> str:
    idx, mod = m.group(1), m.group(2) or ""
    if mod == "#":
        return str(seq)
    if idx:
        i = int(idx)
        if not 1 <= i <= len(args):
            raise ValueError(f"{m.group(0)}: there are only {len(args)} input sources")
        value = args[i - 1]
    else:
        value = " ".join(args)
    if mod == ".":
        value = os.path.splitext(value)[0]
    elif mod == "/":
        value = os.path.basename(value)
    elif mod == "//":
        value = os.path.dirname(value) or "."
    elif mod == "/.":
        value = os.path.splitext(os.path.basename(value))[0]
    return value


def fill(template: str, args: tuple[str, ...], seq: int, quote: bool = True) -> str:
    """The shell command for one job. Inputs are shell-quoted so a file name with spaces
    or quotes stays one argument."""
    q = shlex.quote if quote else (lambda s: s)
    if not has_placeholder(template):
        return template + " " + " ".join(q(a) for a in args)
    return _PH.sub(lambda m: q(_render(m, args, seq)) if m.group(2) != "#" else _render(m, args, seq), template)


def combine(sources: list[list[str]]) -> list[tuple[str, ...]]:
    """Every combination of the input sources, first source varying slowest (like parallel)."""
    if not sources:
        return []
    return list(itertools.product(*sources))


_SHELL_SYNTAX = set("|&;<>()$`\\\"' \t\n*?[]#~=%{}!")


def as_command(line: str) -> list[str] | str:
    """A filled template as argv when it is plain words (saves a shell per task), else
    the string itself for /bin/sh -c. Same meaning either way: without quotes, globs,
    variables or operators the shell would only have split it on spaces."""
    words = line.split(" ")
    if all(w and not (_SHELL_SYNTAX & set(w)) for w in words):
        return words
    return line

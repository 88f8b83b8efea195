"""GNU-parallel style command templates: {} is the input, {1} {2} the n-th input source,
{.} the input without extension, {/} its basename, {//} its dirname, {/.} both, {#} the job
number, {%} the job slot. With no placeholder the input is appended as the last argument.
Also how inputs become jobs: linked sources (:::+), several arguments a job (-N),
columns (--colsep), and the tag a job's output lines carry (--tag)."""
from __future__ import annotations

import itertools
import os
import re
import shlex

_PH = re.compile(r"\{(\d*)(\.|/\.|/|//|#|%)?\}")


def has_placeholder(template: str) -> bool:
    return bool(_PH.search(template))


def uses_slot(template: str) -> bool:
    """Whether the template asks for {%}, the job slot."""
    return "{%}" in template


def _render(m: re.Match, args: tuple[str, ...], seq: int, slot: int, max_args: int) -> str:
    idx, mod = m.group(1), m.group(2) or ""
    if mod == "#":
        return str(seq)
    if mod == "%":
        return str(slot)
    if idx:
        i = int(idx)
        if 1 <= i <= len(args):
            value = args[i - 1]
        elif 1 <= i <= max_args:
            value = ""  # the last job of -N got fewer arguments than N, as parallel's does
        else:
            raise ValueError(f"{m.group(0)}: there are only {len(args)} input sources")
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


def fill(template: str, args: tuple[str, ...], seq: int, quote: bool = True, slot: int = 1,
         max_args: int = 0) -> str:
    """The shell command for one job. Inputs are shell-quoted so a file name with spaces
    or quotes stays one argument. `max_args` is -N: {n} up to it may be missing (empty)."""
    q = shlex.quote if quote else (lambda s: s)
    if not has_placeholder(template):
        return " ".join([template, *(q(a) for a in args)])

    def sub(m: re.Match) -> str:
        value = _render(m, args, seq, slot, max_args)
        return value if m.group(2) in ("#", "%") else q(value)
    return _PH.sub(sub, template)


def combine(sources: list[list[str]], linked: list[bool] | None = None) -> list[tuple[str, ...]]:
    """Every combination of the input sources, first source varying slowest (like parallel).
    A source with `linked[i]` (given with :::+ or ::::+) goes along with the one before it
    instead: their n-th values meet, up to the shorter of them, as in parallel."""
    if not sources:
        return []
    groups: list[list[list[str]]] = []
    for i, source in enumerate(sources):
        if linked and linked[i] and groups:
            groups[-1].append(source)
        else:
            groups.append([source])
    rows = [list(zip(*group)) for group in groups]
    return [tuple(v for row in combo for v in row) for combo in itertools.product(*rows)]


def group_args(combos: list[tuple[str, ...]], per_job: int | None) -> list[tuple[str, ...]]:
    """-N: `per_job` inputs to each job ({1}..{N} are its arguments); -N0 runs each
    input's job with no argument at all."""
    if per_job is None or per_job == 1:
        return combos
    if per_job == 0:
        return [() for _ in combos]
    return [tuple(v for combo in combos[i:i + per_job] for v in combo)
            for i in range(0, len(combos), per_job)]


def split_columns(combos: list[tuple[str, ...]], colsep: str) -> list[tuple[str, ...]]:
    """--colsep: each input splits into columns at the regular expression `colsep`, and the
    columns are the arguments {1} {2} ..."""
    try:
        sep = re.compile(colsep)
    except re.error as e:
        raise ValueError(f"--colsep: {colsep!r} is not a regular expression ({e})") from None
    return [tuple(col for value in combo for col in sep.split(value)) for combo in combos]


def tag_lines(tag: str, text: str) -> str:
    """--tag: every line of a job's output starts with its arguments and a tab."""
    if not text:
        return text
    lines = text.split("\n")
    last = lines.pop()  # "" when the output ends in a newline
    return "".join(f"{tag}\t{line}\n" for line in lines) + (f"{tag}\t{last}" if last else "")


_SHELL_SYNTAX = set("|&;<>()$`\\\"' \t\n*?[]#~=%{}!")

# words the shell runs itself: as argv they would be "command not found" (or, for cd and
# export, do nothing that lasts), so a line that starts with one goes to the shell
_SHELL_WORDS = frozenset((
    "exit cd export unset set . source eval exec readonly shift trap times return break continue "
    "alias unalias umask ulimit wait read type command hash getopts jobs fg bg local declare "
    "typeset let builtin if then else elif fi for while until do done case esac function select "
    "time").split())


def as_command(line: str, functions: frozenset[str] | set[str] = frozenset()) -> list[str] | str:
    """A filled template as argv when it is plain words (saves a shell per task), else
    the string itself for /bin/sh -c. Same meaning either way: without quotes, globs,
    variables or operators the shell would only have split it on spaces. A line that
    starts with a shell builtin or keyword needs the shell; one that calls an exported
    bash function (`functions`) needs bash."""
    words = line.split(" ")
    if functions and (words[0] in functions or not all(w and not (_SHELL_SYNTAX & set(w)) for w in words)):
        return ["bash", "-c", line]
    if words[0] not in _SHELL_WORDS and all(w and not (_SHELL_SYNTAX & set(w)) for w in words):
        return words
    return line

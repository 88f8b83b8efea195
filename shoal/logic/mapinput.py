"""What `shoal map` sends with each task besides its command: the caller's environment
(which variables travel), --pipe blocks cut from stdin, and --results paths. Pure."""
from __future__ import annotations

import os
import re

# Which of the caller's exported variables a task gets by default. GNU parallel runs local
# jobs in the caller's whole environment; across machines only what --env names. shoal
# sends what describes the work (the user's own exports, locale, time zone, exported
# bash functions) and leaves what describes the caller's machine, login or terminal to
# the node: a PATH, HOME or SSH_AUTH_SOCK from another host would point at nothing there.
# `--env NAME` sends one of these anyway (PATH included).
HOST_NAMES = frozenset((
    "PATH HOME USER LOGNAME SHELL PWD OLDPWD SHLVL _ HOSTNAME HOST MAIL MAILPATH DISPLAY "
    "WAYLAND_DISPLAY LS_COLORS LSCOLORS COLORTERM COLUMNS LINES WINDOWID TMUX TMUX_PANE STY "
    "PS1 PS2 PS4 PROMPT_COMMAND HISTFILE OLDPWD SUDO_USER SUDO_UID SUDO_GID SUDO_COMMAND "
    "MOTD_SHOWN KRB5CCNAME").split())
HOST_PREFIXES = ("TERM", "SSH_", "XDG_", "DBUS_", "SHOAL_", "GPG_", "KITTY_", "VTE_", "ITERM_")

# Each task carries its environment in its etcd record; 100,000 tasks with a few KiB
# each is already hundreds of MiB, so a larger environment must be named, not swept up.
MAX_ENV_BYTES = 16 * 1024



def is_host_variable(name: str) -> bool:
    return name in HOST_NAMES or name.startswith(HOST_PREFIXES)


def task_env(environ: dict[str, str], given: dict[str, str], getenv: bool = True) -> dict[str, str]:
    """The variables each task gets: the caller's exports less host ones (with `getenv`),
    then those `given` by name (--env). Raises ValueError above MAX_ENV_BYTES."""
    env = {k: v for k, v in environ.items() if not is_host_variable(k)} if getenv else {}
    env.update(given)
    size = env_bytes(env)
    if size > MAX_ENV_BYTES:
        biggest = sorted(env, key=lambda k: -len(env[k]))[:3]
        raise ValueError(
            f"environment: the exported variables come to {size:,} bytes, more than a task carries "
            f"({MAX_ENV_BYTES:,}); the largest are {', '.join(biggest)}. Unset those you do not need, "
            "or send only what the command uses: --no-getenv --env NAME ...")
    return env


def env_bytes(env: dict[str, str]) -> int:
    return sum(len(k.encode()) + len(v.encode()) + 2 for k, v in env.items())


def bash_functions(env: dict[str, str]) -> frozenset[str]:
    """Names of the bash functions exported in `env` (`export -f NAME`)."""
    return frozenset(k[len("BASH_FUNC_"):-2] for k in env if k.startswith("BASH_FUNC_") and k.endswith("%%"))


# A node claims and ends many tasks in one etcd transaction (at most 1.5 MiB), and each
# carries its whole record, --pipe block included. So a --pipe map keeps few of its tasks
# unfinished at once: together their records stay under this, whatever node they land on.
MAX_PIPE_INFLIGHT_BYTES = 512 * 1024


def pipe_window(largest_block: int) -> int:
    """How many tasks of a --pipe map may be unfinished at once, given its largest block
    (stored base64-encoded, plus the rest of the record)."""
    record = 4 * -(-largest_block // 3) + 2048
    return max(1, MAX_PIPE_INFLIGHT_BYTES // record)


_UNITS = {"": 1, "k": 1000, "K": 1024, "m": 1000 ** 2, "M": 1024 ** 2, "g": 1000 ** 3, "G": 1024 ** 3}


def parse_block(text: str) -> int:
    """--block sizes as parallel writes them: 64K = 65536 bytes, 64k = 64000."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([kKmMgG]?)\s*", text)
    if not m or float(m.group(1)) <= 0:
        raise ValueError(f"--block: {text!r} is not a size (use 64K, 10k, 500000)")
    return int(float(m.group(1)) * _UNITS[m.group(2)])


def cut_blocks(data: bytes, block: int, records: int | None = None, recend: bytes = b"\n") -> list[bytes]:
    """--pipe: `data` cut into the stdin of each job, only ever after a record end.
    With `records` (-N) each block holds that many records; else each holds as many
    whole records as fit in `block` bytes (one record longer than that, whole)."""
    blocks: list[bytes] = []
    if records is not None:
        lines = data.split(recend)
        if lines and lines[-1] == b"":
            lines.pop()
            ends = [recend] * len(lines)
        else:
            ends = [recend] * (len(lines) - 1) + [b""]
        step = max(1, records)
        for i in range(0, len(lines), step):
            blocks.append(b"".join(line + end for line, end in zip(lines[i:i + step], ends[i:i + step])))
        return blocks
    start = 0
    while start < len(data):
        if len(data) - start <= block:
            blocks.append(data[start:])
            break
        cut = data.rfind(recend, start, start + block)
        if cut < 0:  # one record longer than a block: it goes whole
            cut = data.find(recend, start + block)
            if cut < 0:
                blocks.append(data[start:])
                break
        blocks.append(data[start:cut + len(recend)])
        start = cut + len(recend)
    return blocks


def results_path(base: str, args: tuple[str, ...]) -> str:
    """--results DIR: the directory of one job's files, DIR/1/<arg 1>/2/<arg 2>/..., as
    parallel lays them out (a / in a value is written \\_)."""
    parts = [base]
    for i, value in enumerate(args, 1):
        parts += [str(i), value.replace("/", "\\_")]
    return os.path.join(*parts)

"""Command templates filled as GNU parallel fills them (`{}`, `{1}`, `{.}`, ...), and the
rules for what each `map` task carries (environment, --pipe blocks, --results paths): the
pure code lives in logic/, shown here as part of the SDK."""
from ..logic.mapinput import (MAX_ENV_BYTES, bash_functions, cut_blocks, parse_block, pipe_window,
                              results_path, task_env)
from ..logic.template import (as_command, combine, fill, group_args, split_columns, tag_lines,
                              uses_slot)
from ..model.task import MAX_INPUT_BYTES

__all__ = ["MAX_ENV_BYTES", "MAX_INPUT_BYTES", "as_command", "bash_functions", "combine", "cut_blocks",
           "fill", "group_args", "parse_block", "pipe_window", "results_path", "split_columns", "tag_lines", "task_env",
           "uses_slot"]

"""Built-in flow operators, as written in a stage's `op:` field.

    words                                      one record per whitespace-separated word
    count            {count: {key: [1]}}       records per key -> key fields, count
    {reduce: {key: [1], value: 2, fn: sum}}    per key, sum|min|max of a numeric field
    {sort: {key: [1], numeric: false, reverse: false}}
    {top: {k: 10, by: 2, numeric: true, reverse: false}}   the k records with the largest `by`
    distinct         {distinct: {key: [1, 2]}} unique records, or one record per key
    {join: {key: [1], right_key: [1], how: inner}}   two inputs: 0 is left, 1 is right
    pass                                       records unchanged

A bare name means the operator with its defaults. Fields are counted from 1; a key is a
field number or a list of them.
"""
from __future__ import annotations

from typing import Any, ClassVar, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, StrictBool, ValidationError, field_validator, \
    model_validator

from ..errors import InvalidSpec, describe_validation

_KEY_FORM = "a field number from 1, or a list of them such as [1, 2]"


def _key_list(value: Any, optional: bool = False) -> Any:
    if value is None and optional:
        return None
    if isinstance(value, bool) or value is None:
        raise ValueError(f"must be {_KEY_FORM} (got {value!r})")
    if isinstance(value, int):
        value = [value]
    if not isinstance(value, (list, tuple)) or not value:
        raise ValueError(f"must be {_KEY_FORM} (got {value!r})")
    bad = [v for v in value if isinstance(v, bool) or not isinstance(v, int) or v < 1]
    if bad:
        raise ValueError(f"must be {_KEY_FORM} (got {list(value)!r})")
    if len(set(value)) != len(value):
        raise ValueError(f"names a field twice (got {list(value)!r})")
    return list(value)


def _field_number(value: Any) -> Any:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"must be a field number from 1 (got {value!r})")
    return value


class _Options(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    name: ClassVar[str]


class WordsOptions(_Options):
    name: ClassVar[str] = "words"


class PassOptions(_Options):
    name: ClassVar[str] = "pass"


class CountOptions(_Options):
    name: ClassVar[str] = "count"
    key: list[int] = Field(default_factory=lambda: [1])

    _key = field_validator("key", mode="before")(lambda v: _key_list(v))


class ReduceOptions(_Options):
    name: ClassVar[str] = "reduce"
    key: list[int] = Field(default_factory=lambda: [1])
    value: int
    fn: Literal["sum", "min", "max"] = "sum"

    _key = field_validator("key", mode="before")(lambda v: _key_list(v))
    _value = field_validator("value", mode="before")(lambda v: _field_number(v))

    @model_validator(mode="after")
    def _value_not_key(self):
        if self.value in self.key:
            raise ValueError(f"value: field {self.value} is also a key field")
        return self


class SortOptions(_Options):
    name: ClassVar[str] = "sort"
    key: list[int] = Field(default_factory=lambda: [1])
    numeric: StrictBool = False
    reverse: StrictBool = False

    _key = field_validator("key", mode="before")(lambda v: _key_list(v))


class TopOptions(_Options):
    name: ClassVar[str] = "top"
    k: int = 10
    by: int
    numeric: StrictBool = True
    reverse: StrictBool = False

    _by = field_validator("by", mode="before")(lambda v: _field_number(v))

    @field_validator("k", mode="before")
    @classmethod
    def _k(cls, v: Any) -> Any:
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"must be a positive integer (got {v!r})")
        return v


class DistinctOptions(_Options):
    name: ClassVar[str] = "distinct"
    key: Union[list[int], None] = None

    _key = field_validator("key", mode="before")(lambda v: _key_list(v, optional=True))


class JoinOptions(_Options):
    name: ClassVar[str] = "join"
    key: list[int] = Field(default_factory=lambda: [1])
    right_key: Union[list[int], None] = None
    how: Literal["inner", "left"] = "inner"

    _key = field_validator("key", mode="before")(lambda v: _key_list(v))
    _right = field_validator("right_key", mode="before")(lambda v: _key_list(v, optional=True))

    @model_validator(mode="after")
    def _same_length(self):
        if self.right_key is not None and len(self.right_key) != len(self.key):
            raise ValueError(f"right_key: must name as many fields as key ({len(self.key)}; "
                             f"got {len(self.right_key)})")
        return self


OPTIONS: dict[str, type[_Options]] = {o.name: o for o in (
    WordsOptions, CountOptions, ReduceOptions, SortOptions, TopOptions, DistinctOptions,
    JoinOptions, PassOptions)}
Options = Union[WordsOptions, CountOptions, ReduceOptions, SortOptions, TopOptions, DistinctOptions,
                JoinOptions, PassOptions]
COMBINABLE = ("count", "reduce", "top", "distinct")
_FORMS = ("an operator name (" + ", ".join(OPTIONS) + ") or a mapping of one name to its options, "
          "such as {top: {k: 10, by: 2}}")


class OpSpec(BaseModel):
    """One built-in operator and its options. Validates from the YAML forms too (a bare
    name, or {name: options}); `value()` gives the YAML form back."""
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: Literal["words", "count", "reduce", "sort", "top", "distinct", "join", "pass"]
    options: Options

    @model_validator(mode="before")
    @classmethod
    def _from_yaml(cls, data: Any) -> Any:
        if isinstance(data, OpSpec):
            return data
        if isinstance(data, dict) and set(data) == {"name", "options"}:
            name, opts = data["name"], data["options"]
        else:
            name, opts = _split(data)
        if isinstance(opts, _Options):
            return {"name": name, "options": opts}
        return {"name": name, "options": OPTIONS[name].model_validate(opts or {})}

    def value(self) -> str | dict:
        """The YAML/JSON form: the bare name when every option is the default."""
        opts = self.options.model_dump(exclude_defaults=True)
        return {self.name: opts} if opts else self.name

    @property
    def inputs(self) -> int:
        return 2 if self.name == "join" else 1

    @property
    def combinable(self) -> bool:
        """Senders may pre-aggregate what they send (see combined_key_fields)."""
        return self.name in COMBINABLE

    @property
    def key_fields(self) -> list[int]:
        """The fields that group or order records (left input for join); [] when the whole
        record is the key (distinct without key) or there is none."""
        return list(getattr(self.options, "key", None) or [])

    @property
    def right_key_fields(self) -> list[int]:
        """join: the key fields of the right input (port 1)."""
        if self.name != "join":
            return []
        return list(self.options.right_key or self.options.key)

    @property
    def needs_fields(self) -> int:
        """The highest field the operator reads (records with fewer fields are bad); for
        join, over both inputs (see needs_on)."""
        return max(self.needs_on(0), self.needs_on(1) if self.name == "join" else 0)

    def needs_on(self, port: int) -> int:
        """The highest field the operator reads on one input port."""
        o = self.options
        if self.name in ("count", "sort"):
            return max(o.key)
        if self.name == "reduce":
            return max([*o.key, o.value])
        if self.name == "top":
            return o.by
        if self.name == "distinct":
            return max(o.key) if o.key else 1
        if self.name == "join":
            return max(self.right_key_fields if port == 1 else o.key)
        return 0

    @property
    def combined_key_fields(self) -> list[int]:
        """Where the key fields sit in what a combiner emits: count and reduce emit the key
        fields first (1..m) and then the partial value; top and distinct emit whole records.
        A hash edge carrying combiner output must hash these fields."""
        if self.name in ("count", "reduce"):
            return list(range(1, len(self.options.key) + 1))
        return self.key_fields

    def combined_edge_key(self, edge_key: list[int]) -> list[int] | None:
        """The fields of combiner output that hold a hash edge's key fields; None when the
        edge key is not made of the operator's key fields (pre-aggregation would then be
        wrong)."""
        if self.name not in ("count", "reduce"):
            return list(edge_key)
        key = self.options.key
        if any(k not in key for k in edge_key):
            return None
        return [key.index(k) + 1 for k in edge_key]


def _split(value: Any) -> tuple[str, Any]:
    """(name, options) of a YAML form, or ValueError."""
    if isinstance(value, str):
        name, opts = value, None
    elif isinstance(value, dict) and len(value) == 1:
        (name, opts), = value.items()
    else:
        raise ValueError(f"expected {_FORMS} (got {value!r})")
    if not isinstance(name, str) or name not in OPTIONS:
        raise ValueError(f"unknown operator {name!r} (known: {', '.join(OPTIONS)})")
    if opts is not None and not isinstance(opts, (dict, _Options)):
        fields = ", ".join(f"{f}: ..." for f in OPTIONS[name].model_fields)
        raise ValueError(f"options of {name} must be a mapping such as {{{name}: {{{fields}}}}} "
                         f"(got {opts!r})")
    return name, opts


def parse_op(value: Any, where: str = "op") -> OpSpec:
    """An OpSpec from its YAML form, or InvalidSpec naming every problem."""
    if isinstance(value, OpSpec):
        return value
    try:
        name, opts = _split(value)
    except ValueError as e:
        raise InvalidSpec([f"{where}: {e}"]) from None
    model = OPTIONS[name]
    try:
        options = model.model_validate(opts or {})
    except ValidationError as e:
        raise InvalidSpec(describe_validation(e, f"{where}.{name}", forms=_EXPECTED, fields=model.model_fields,
                                              noun="option")) from None
    return OpSpec(name=name, options=options)


_EXPECTED = {
    "key": _KEY_FORM,
    "right_key": _KEY_FORM,
    "value": "a field number from 1",
    "by": "a field number from 1",
    "k": "a positive integer",
    "fn": "one of sum, min, max",
    "how": "inner or left",
    "numeric": "true or false",
    "reverse": "true or false",
}

"""A small schema checker for the JSON ckptkit reads (safetensors headers, indexes, manifests,
configs): one declarative schema per format, one `check` that names the file and the field.

jsonschema would do the checking, but its errors name schema paths rather than the field a person
must fix, and it is not a runtime dependency; the vocabulary needed here fits in a page.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ckptkit.errors import CkptError, printable

INT64_MAX = 2**63 - 1


class _Bad(Exception):
    def __init__(self, where: str, expected: str, value):
        self.where, self.expected, self.value = where, expected, value


def describe(value) -> str:
    if isinstance(value, bool):
        return f"boolean {value}".lower()
    if isinstance(value, dict):
        return "an object"
    if isinstance(value, list):
        return "a list"
    if value is None:
        return "null"
    text = repr(value)
    return printable(text if len(text) <= 40 else text[:37] + "...")


class Spec:
    expected = "a value"

    def validate(self, value, where: str) -> None:  # pragma: no cover - abstract
        raise NotImplementedError


@dataclass
class AnyValue(Spec):
    expected = "any value"

    def validate(self, value, where):
        return None


@dataclass
class Str(Spec):
    expected = "a string"

    def validate(self, value, where):
        if not isinstance(value, str):
            raise _Bad(where, self.expected, value)


@dataclass
class Int(Spec):
    lo: int = -INT64_MAX - 1
    hi: int = INT64_MAX

    @property
    def expected(self):
        if self.lo == 0 and self.hi == INT64_MAX:
            return "a non-negative integer"
        if self.lo == 1 and self.hi == INT64_MAX:
            return "a positive integer"
        return f"an integer in [{self.lo}, {self.hi}]"

    def validate(self, value, where):
        if isinstance(value, bool) or not isinstance(value, int) or not self.lo <= value <= self.hi:
            raise _Bad(where, self.expected, value)


@dataclass
class Num(Spec):
    expected = "a number"

    def validate(self, value, where):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise _Bad(where, self.expected, value)


@dataclass
class Bool(Spec):
    expected = "true or false"

    def validate(self, value, where):
        if not isinstance(value, bool):
            raise _Bad(where, self.expected, value)


@dataclass
class Null(Spec):
    expected = "null"

    def validate(self, value, where):
        if value is not None:
            raise _Bad(where, self.expected, value)


@dataclass
class OneOf(Spec):
    options: tuple

    @property
    def expected(self):
        return " or ".join(o.expected for o in self.options)

    def validate(self, value, where):
        for option in self.options:
            try:
                option.validate(value, where)
                return
            except _Bad:
                continue
        raise _Bad(where, self.expected, value)


@dataclass
class List(Spec):
    item: Spec = field(default_factory=AnyValue)
    min_len: int = 0
    max_len: int | None = None

    @property
    def expected(self):
        size = f" of {self.min_len}" if self.max_len == self.min_len else ""
        return f"a list{size} of {self.item.expected.removeprefix('a ').removeprefix('an ')}s".replace("ys", "ies")

    def validate(self, value, where):
        if not isinstance(value, list) or len(value) < self.min_len or (
                self.max_len is not None and len(value) > self.max_len):
            raise _Bad(where, self.expected, value)
        for i, item in enumerate(value):
            self.item.validate(item, f"{where}[{i}]")


@dataclass
class Map(Spec):
    """An object with any keys and values of one kind."""
    value: Spec = field(default_factory=AnyValue)

    @property
    def expected(self):
        return "an object"

    def validate(self, value, where):
        if not isinstance(value, dict):
            raise _Bad(where, self.expected, value)
        for key, item in value.items():
            self.value.validate(item, f"{where}.{printable(key)}" if where else printable(key))


@dataclass
class Obj(Spec):
    """An object with known fields (`required` must be present; other keys are allowed and
    unchecked unless `closed`)."""
    fields: dict = field(default_factory=dict)
    required: tuple = ()
    closed: bool = False
    expected = "an object"

    def validate(self, value, where):
        if not isinstance(value, dict):
            raise _Bad(where, self.expected, value)
        for key in self.required:
            if key not in value:
                raise _Bad(f"{where}.{key}" if where else key, "present", "missing")
        for key, item in value.items():
            sub = f"{where}.{printable(key)}" if where else printable(key)
            spec = self.fields.get(key)
            if spec is None:
                if self.closed:
                    raise _Bad(sub, "absent (unknown field)", item)
                continue
            spec.validate(item, sub)


def check(value, spec: Spec, where: str) -> None:
    """Validate `value` against `spec`; a mismatch is one CkptError naming `where` and the field."""
    try:
        spec.validate(value, "")
    except _Bad as bad:
        if bad.value == "missing" and bad.expected == "present":
            raise CkptError(f"{where}: field {bad.where!r} is missing") from None
        field_name = f"field {bad.where!r}" if bad.where else "top level"
        raise CkptError(f"{where}: {field_name} must be {bad.expected}, got {describe(bad.value)}") from None

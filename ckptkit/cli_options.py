"""Option types shared by every command (cli.py and trigflow/commands.py), so that the same option
takes the same spellings everywhere."""

from __future__ import annotations

import click

# the spellings every --dtype accepts, by the short name the library takes
DTYPE_SPELLINGS = {"fp32": ("fp32", "float32", "f32"), "fp16": ("fp16", "float16", "f16", "half"),
                   "bf16": ("bf16", "bfloat16"), "keep": ("keep",)}


class DType(click.ParamType):
    """--dtype fp32|fp16|bf16 (and keep where a command can keep the stored dtype); the long
    spellings float32/float16/bfloat16 are accepted and normalised to the short ones."""

    name = "dtype"

    def __init__(self, *names: str):
        self.names = names

    def get_metavar(self, param, ctx=None) -> str:
        return "[" + "|".join(self.names) + "]"

    def convert(self, value, param, ctx):
        text = str(value).lower()
        for short in self.names:
            if text in DTYPE_SPELLINGS[short]:
                return short
        self.fail(f"{value!r} is not one of {', '.join(self.names)} (or float32, float16, bfloat16)", param, ctx)


class Size(click.ParamType):
    """A size in bytes: 4GB, 3.5GiB, 800MB."""

    name = "size"

    def convert(self, value, param, ctx):
        from ckptkit.units import parse_bytes

        if isinstance(value, int):
            return value
        try:
            return parse_bytes(value)
        except ValueError as exc:
            self.fail(str(exc), param, ctx)

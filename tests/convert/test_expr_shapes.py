"""expr.shapes infers shapes in plain Python: the same answers torch gives when it evaluates the
expression on the meta device, and a ValueError where torch would refuse."""

import pytest
import torch

from ckptkit.engine import expr
from ckptkit.engine.expr import arange, cat, full, narrow, randn, reshape, src, transpose, zeros

SOURCES = {"a": (6, 4), "b": (2, 4), "c": (4,), "conv": (8, 3, 3, 3), "s": (), "e": (0, 4)}


def on_meta(e):
    fetch = lambda n: torch.empty(SOURCES[n], device="meta")
    fetch.device = "meta"
    return tuple(e.evaluate(fetch).shape)


GOOD = [src("a"), cat(["a", "b"]), cat(["a", "b"], dim=-2), cat([transpose("a"), transpose("b")], dim=1),
        narrow("a", 0, 2, 5), narrow("a", 1, 0, 4), narrow("a", -1, 1, 3), narrow("a", 0, 6, 6),
        reshape("conv", (8, 27)), reshape("conv", (-1, 3)), reshape("c", (1, 4, 1)), reshape("s", (1,)),
        transpose("a"), transpose("c"), transpose("s"), zeros((3, 2), "a"), arange(7), full((2, 3), 1.0, "F16"),
        randn((4, 5), 0, 0.02, "BF16"), cat([narrow("a", 0, 0, 2), narrow("a", 0, 2, 6)]), cat(["e", "b"]),
        reshape(cat([narrow("conv", 0, 0, 4), narrow("conv", 0, 4, 8)]), (8, 27))]
BAD = [cat(["a", "c"]), cat([transpose("a"), "b"]), narrow("a", 0, 4, 7), narrow("a", 0, 3, 2),
       reshape("a", (5, 5)), reshape("a", (-1, 5)), transpose("conv"), cat(["a", "b"], dim=1)]


@pytest.mark.parametrize("e", GOOD, ids=str)
def test_shapes_equal_torch_meta(e):
    assert expr.shape_of(e, SOURCES) == on_meta(e)
    assert expr.shapes({"x": e}, SOURCES) == {"x": on_meta(e)}


@pytest.mark.parametrize("e", BAD, ids=str)
def test_shapes_torch_refuses_are_errors(e):
    with pytest.raises((RuntimeError, IndexError, ValueError)):
        on_meta(e)
    with pytest.raises(ValueError):
        expr.shape_of(e, SOURCES)

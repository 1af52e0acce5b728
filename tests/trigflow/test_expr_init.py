"""The `full` / `randn` init ops the TrigFlow planner adds to expr.py: values, determinism, meta shapes,
printing and JSON, and that `invert` passes over them."""

import json

import torch

from ckptkit.engine import expr


def test_init_ops():
    f, r = expr.full((3, 2), 0.0, "F16"), expr.randn((4, 5), 7, 0.02, "BF16")
    assert f.sources() == [] and r.sources() == []
    zero = f.evaluate(lambda n: None)
    assert zero.dtype == torch.float16 and not zero.any() and zero.shape == (3, 2)
    a, b = r.evaluate(lambda n: None), r.evaluate(lambda n: None)
    assert a.dtype == torch.bfloat16 and torch.equal(a, b)  # seeded: the same bytes every time
    assert torch.equal(a, (torch.randn(4, 5, generator=torch.Generator().manual_seed(7)) * 0.02).bfloat16())
    assert expr.shapes({"f": f, "r": r}, {}) == {"f": (3, 2), "r": (4, 5)}  # on meta, no data
    assert str(f) == "full([3, 2], 0.0, F16)" and str(r) == "randn([4, 5], seed 7, std 0.02, BF16)"
    assert json.loads(json.dumps(r.to_json())) == {"op": "randn", "args": [[4, 5], 7, 0.02, "BF16"]}


def test_invert_skips_init_ops():
    mapping = {"w": expr.src("a"), "new": expr.full((2,), 1.0, "F32")}
    assert expr.invert(mapping, {"a": (2, 2)}) == {"a": expr.src("w")}

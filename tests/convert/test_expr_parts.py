"""expr.part: several output tensors made by one transform (a quantized layer's data, scales and
state). The executor evaluates the transform once for consecutive parts, with or without a pool;
parts that are not consecutive are still right (evaluated again)."""

from concurrent.futures import ThreadPoolExecutor

import pytest
import torch

from ckptkit.engine import expr
from ckptkit.engine.plan import TensorOp
from ckptkit.engine.produce import tensors_in_order

CALLS: list[str] = []


def _split(t: torch.Tensor, tag: str) -> dict[str, torch.Tensor]:
    CALLS.append(tag)
    return {"double": t * 2, "rows": t.sum(1), "first": t[0].clone()}


expr.register("test_split", _split, lambda shape, tag: {"double": shape, "rows": shape[:1], "first": shape[1:]})


class Source:
    def __init__(self):
        self.tensors = {"a": torch.arange(12.0).reshape(3, 4), "b": torch.ones(2, 5)}

    def load(self, name):
        return self.tensors[name]


def _ops(names_keys):
    ops = []
    for src, key in names_keys:
        e = expr.part(expr.fn("test_split", expr.src(src), src), key)
        ops.append(TensorOp(f"{src}.{key}", e, expr.shape_of(e, {"a": (3, 4), "b": (2, 5)}), "F32", "F32"))
    return ops


@pytest.mark.parametrize("workers", [1, 3])
def test_consecutive_parts_share_one_evaluation(workers):
    source = Source()
    ops = _ops([("a", "double"), ("a", "rows"), ("a", "first"), ("b", "rows"), ("b", "double"), ("a", "first")])
    CALLS.clear()
    pool = ThreadPoolExecutor(workers) if workers > 1 else None
    try:
        got = {op.name + str(i): t for i, (op, t) in enumerate(tensors_in_order(ops, source, pool, 2))}
    finally:
        if pool:
            pool.shutdown()
    assert CALLS == ["a", "b", "a"]  # the last `a.first` follows b's parts: evaluated again
    a, b = source.tensors["a"], source.tensors["b"]
    assert torch.equal(got["a.double0"], a * 2) and torch.equal(got["a.rows1"], a.sum(1))
    assert torch.equal(got["a.first2"], a[0]) and torch.equal(got["a.first5"], a[0])
    assert torch.equal(got["b.rows3"], b.sum(1)) and torch.equal(got["b.double4"], b * 2)


def test_a_part_evaluates_alone_and_prints():
    e = expr.part(expr.fn("test_split", expr.src("a"), "a"), "rows")
    assert torch.equal(e.evaluate(Source().load), torch.tensor([6.0, 22.0, 38.0]))
    assert str(e) == "test_split(a, a)[rows]"
    assert expr.rename(e, lambda n: "x." + n).sources() == ["x.a"]
    with pytest.raises(ValueError):
        expr.part(expr.src("a"), "rows")


def test_a_planned_shape_the_transform_does_not_give_is_an_error():
    source = Source()
    e = expr.part(expr.fn("test_split", expr.src("a"), "a"), "rows")
    op = TensorOp("bad", e, (4,), "F32", "F32")
    from ckptkit.errors import CkptError

    with pytest.raises(CkptError, match="planned shape"):
        list(tensors_in_order([op], source, None, 2))

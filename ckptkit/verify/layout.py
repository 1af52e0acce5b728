"""Layout: the tensors and shapes a component must have for its family, derived the same way
conversion derives them (config from the weights or config.json, the model's own state dict,
our layout map), with missing, unexpected and wrong-shape names listed."""

from __future__ import annotations

from ckptkit.engine import expr
from ckptkit.convert.components import local_shapes, source_config
from ckptkit.convert.layouts import get_layout
from ckptkit.convert.models import diffusers_shapes
from ckptkit.errors import CkptError
from ckptkit.verify.result import Findings
from ckptkit.verify.sets import Component, ComponentSet

INTEGER_CODES = frozenset({"I8", "I16", "I32", "I64", "U8", "U16", "U32", "U64", "BOOL"})
# Present in real files but not part of the model (tolerated, never required).
# ... and torch's BatchNorm step counter (int64 by design; FLUX.2's VAE `bn.`, which files may or may not carry)
TOLERATED = ("position_ids", "logit_scale", "encoder.embed_tokens.weight", "text_projection", "num_batches_tracked")


def expected_shapes(comp: Component, shapes: dict) -> dict[str, tuple[int, ...]]:
    spec = comp.spec
    # names and shapes do not depend on the values the weights cannot decide (heads, activations)
    config = source_config(spec, shapes, comp.names, comp.config, comp.ckpt, strict=False)
    layout = get_layout(spec.layout)
    if hasattr(layout, "expected_shapes"):  # a layout that knows its tensors without the class (hf_llm)
        return layout.expected_shapes(shapes, config)
    dshapes = diffusers_shapes(spec.diffusers_class, config)
    if comp.names == "diffusers":
        return dshapes
    mapping = layout.to_original(dshapes, config)
    if spec.identity_projection:  # the identity diffusers adds; the original file has none
        mapping.pop("text_projection.weight", None)
    return {n: s for n, s in expr.shapes(mapping, dshapes).items() if mapping[n].op != "zeros" or n in shapes}


def check_layout(cset: ComponentSet) -> Findings:
    out = Findings()
    if cset.family is None and not any(c.spec for c in cset.components.values()):
        out.add("layout", None, "family", None, None, False, "no family or component recognised")
        return out
    for name, comp in cset.components.items():
        if comp.ckpt is None:
            out.add("layout", name, "tensors", None, None, None, "skipped: unreadable")
            continue
        if comp.spec is None and comp.ckpt.metadata.get("general.type") == "mmproj":
            # llama.cpp's clip mmproj beside an LLM text encoder's GGUF (quant/mmproj_names.py): its
            # tower in llama.cpp's names, no component of the family
            out.add("layout", name, "tensors", len(comp.ckpt.tensors), None, None,
                    "skipped: a llama.cpp clip mmproj (the vision tower beside a text encoder GGUF)")
            continue
        if comp.spec is None:
            out.add("layout", name, "component", name, None, False, f"{name} is not a component of {cset.family}")
            continue
        if comp.spec.role == "unknown":  # no spec says which tensors it must have: not a pass
            out.add("layout", name, "tensors", None, None, None, "skipped: unknown family")
            continue
        shapes = local_shapes(comp.ckpt, comp.prefix, set(comp.exclude))
        try:
            expected = expected_shapes(comp, shapes)
        except CkptError as exc:
            out.add("layout", name, "config", None, None, False, str(exc))
            continue
        integer = sorted(n for n in shapes if not n.endswith(TOLERATED)
                         and comp.ckpt.tensors[comp.prefix + n].dtype in INTEGER_CODES)
        if integer:
            out.add("layout", name, "integer_weights", len(integer), 0, False,
                    f"{', '.join(integer[:3])}{' ...' if len(integer) > 3 else ''} stored as integers; "
                    f"a {comp.spec.diffusers_class} computes with floating-point weights")
        missing = sorted(set(expected) - set(shapes))
        unexpected = sorted(n for n in set(shapes) - set(expected) if not n.endswith(TOLERATED))
        wrong = sorted(n for n in set(expected) & set(shapes) if tuple(expected[n]) != tuple(shapes[n]))
        if not (missing or unexpected or wrong):
            out.add("layout", name, "tensors", len(shapes), len(expected), True,
                    f"{comp.spec.diffusers_class}, {comp.names} names")
            continue
        # one failing row per kind of problem, so that a report names it (metric "missing", ...)
        for metric, items in (("missing", missing), ("unexpected", unexpected), ("wrong_shape", wrong)):
            if items:
                out.add("layout", name, metric, len(items), 0, False,
                        f"{', '.join(items[:3])}{' ...' if len(items) > 3 else ''} "
                        f"({len(shapes)} tensors, {len(expected)} expected of a {comp.spec.diffusers_class})")
        out.tables[f"layout:{name}"] = {"missing": missing, "unexpected": unexpected, "wrong_shape": wrong}
    return out

"""Merge planner: a component set (any layout) -> one bundled original-layout checkpoint.

The inverse of split: each component is mapped to original names and given its family's bundle
prefix. Components are found from `ckptkit.json` when present, else by file name and detection.
"""

from __future__ import annotations

from pathlib import Path

from ckptkit.convert.component_set import open_component_set, stored_naming
from ckptkit.convert.components import map_component
from ckptkit.convert.configs import metadata_value
from ckptkit.engine.ops import tensor_ops
from ckptkit.engine.plan import OutputFile, Plan
from ckptkit.errors import CkptError
from ckptkit.families import get_family
from ckptkit.formats.sharded import CompositeCheckpoint


def plan_merge(folder: Path, output_name: str, family: str | None = None) -> tuple[Plan, CompositeCheckpoint]:
    ckpt, family, comps = open_component_set(folder, family)
    spec = get_family(family)
    plan = Plan("merge", str(folder), [], info={"family": family, "layout": "original", "components": {}})
    tensors = []
    carried: dict[str, dict] = {}
    for comp in spec.components:
        if comp.name not in comps:
            continue
        prefix, naming, config = comps[comp.name]
        naming = stored_naming(comp, {n[len(prefix):] for n in ckpt.tensors if n.startswith(prefix)}, naming)
        cmap = map_component(ckpt, comp, prefix, naming, "original", config=config)
        plan.dropped.update(cmap.dropped)
        if config is not None or cmap.config is not None:
            carried[comp.name] = cmap.config or config
        ops = {comp.prefix + n: e for n, e in cmap.ops.items()}
        tensors += tensor_ops(ckpt, ops, None, False, plan.notes, comp.name)
        plan.info["components"][comp.name] = {"role": comp.role, "file": output_name, "naming": "original"}
    unknown = sorted(set(comps) - {c.name for c in spec.components})
    if unknown:
        raise CkptError(f"{folder}: {', '.join(unknown)} are not components of {family}")
    names = [t.name for t in tensors]
    if len(set(names)) != len(names):
        raise CkptError(f"{folder}: components overlap (the same tensor name twice)")
    plan.outputs.append(OutputFile(output_name, None, "original", tensors,
                                   metadata={"ckptkit.family": family, "ckptkit.merged_from": str(folder),
                                             **metadata_value(carried)}))
    return plan, ckpt

"""Convert planner: one component between original and diffusers layouts (a file <-> a
diffusers component folder). Whole bundles go through split (-> diffusers folder) and diffusers
pipeline folders through merge (-> bundle)."""

from __future__ import annotations

from ckptkit.convert.components import component_spec, config_json, config_to_carry, map_component, output_path
from ckptkit.convert.configs import metadata_value
from ckptkit.engine.ops import CAST_TARGETS, tensor_ops
from ckptkit.engine.plan import OutputFile, Plan
from ckptkit.errors import CkptError
from ckptkit.families.detect import Detection
from ckptkit.formats.base import Checkpoint


def plan_convert_component(ckpt: Checkpoint, det: Detection, layout: str, dtype: str = "keep",
                           output_name: str = "") -> Plan:
    if layout not in ("original", "diffusers"):
        raise CkptError(f"convert --layout must be original or diffusers, not {layout!r}")
    comp = component_spec(det)
    shipped = ckpt.config if det.names == "diffusers" else None
    cmap = map_component(ckpt, comp, "", det.names, layout, config=shipped)
    plan = Plan("convert", str(ckpt.path), [], dropped=dict(cmap.dropped),
                info={"family": det.family, "variant": det.variant, "layout": layout,
                      "components": {comp.name: {"role": comp.role, "naming": layout,
                                                 "diffusers_class": comp.diffusers_class}}})
    tensors = tensor_ops(ckpt, cmap.ops, CAST_TARGETS[dtype], False, plan.notes, comp.name)
    if layout == "diffusers":
        path = output_path(comp, "diffusers").split("/", 1)[1]  # inside the destination folder
        plan.sidecars["config.json"] = config_json(comp, cmap.config)
    metadata = {"ckptkit.component": comp.name}
    family = det.family or (ckpt.metadata or {}).get("ckptkit.family")
    if family:  # which family's class it was written as (SD3's CLIP-L carries an identity projection)
        metadata["ckptkit.family"] = family
    if layout != "diffusers":
        path = output_name
        carried = config_to_carry(ckpt, comp, "", det.names, cmap, shipped=shipped)
        metadata.update(metadata_value({comp.name: carried} if carried else {}))
    plan.outputs.append(OutputFile(path, comp.name, layout, tensors, metadata=metadata))
    plan.info["components"][comp.name]["file"] = path
    return plan

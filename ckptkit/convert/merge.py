"""Merge planner: a component set (any layout) -> one bundled original-layout checkpoint.

The inverse of split: each component is mapped to original names and given its family's bundle
prefix. Components are found from `ckptkit.json` when present, else by file name and detection.

To `.gguf` it writes the one-file bundle stable-diffusion.cpp loads (`--client sdcpp`; the other
clients load one component per GGUF): quantized tensors keep their bytes, plain ones their dtype.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from ckptkit.convert.component_set import open_component_set, stored_naming
from ckptkit.convert.components import map_component
from ckptkit.convert.configs import metadata_value
from ckptkit.engine.ops import tensor_ops
from ckptkit.engine.plan import OutputFile, Plan, TensorOp
from ckptkit.errors import CkptError
from ckptkit.families import get_family
from ckptkit.formats.dtypes import DTYPES
from ckptkit.quant.plan import stored_as_ggml, unit_dims_trimmed
from ckptkit.formats.sharded import CompositeCheckpoint


def plan_merge(folder: Path, output_name: str, family: str | None = None,
               client: str | None = None) -> tuple[Plan, CompositeCheckpoint]:
    gguf_out = output_name.endswith(".gguf")
    if gguf_out:
        _bundle_client(client, output_name)
    elif client is not None:
        raise CkptError(f"--client {client}: a merge to safetensors is for no GGUF client; name the output .gguf")
    ckpt, family, comps = open_component_set(folder, family)
    try:
        return _plan(ckpt, folder, output_name, family, comps, gguf_out), ckpt
    except BaseException:
        ckpt.close()
        raise


def _bundle_client(name: str | None, output_name: str):
    from ckptkit.quant.clients import CLIENTS, get_client

    bundles = [c for c in CLIENTS.values() if c.bundle]
    how = " or ".join(f"--client {c.name}" for c in bundles)
    if name is None:
        raise CkptError(f"{output_name}: one GGUF of every component is {bundles[0].title}'s bundle: add {how} "
                        "(ComfyUI-GGUF and diffusers load one component per GGUF file)")
    client = get_client(name)
    if not client.bundle:
        raise CkptError(f"--client {name}: {client.title} loads one component per GGUF file, no bundle; "
                        f"merge to .gguf with {how}, or to .safetensors")
    return client


def _plan(ckpt, folder: Path, output_name: str, family: str, comps: dict, gguf_out: bool) -> Plan:
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
        part = tensor_ops(ckpt, ops, None, False, plan.notes, comp.name)
        tensors += [_as_stored(ckpt, t) for t in part] if gguf_out else part
        plan.info["components"][comp.name] = {"role": comp.role, "file": output_name, "naming": "original"}
    unknown = sorted(set(comps) - {c.name for c in spec.components})
    if unknown:
        raise CkptError(f"{folder}: {', '.join(unknown)} are not components of {family}")
    names = [t.name for t in tensors]
    if len(set(names)) != len(names):
        raise CkptError(f"{folder}: components overlap (the same tensor name twice)")
    metadata = {"ckptkit.family": family, "ckptkit.merged_from": str(folder), **metadata_value(carried)}
    if not gguf_out:
        plan.outputs.append(OutputFile(output_name, None, "original", tensors, metadata=metadata))
        return plan
    kv: dict = {"general.quantization_version": 2, **metadata}
    tensors = [stored_as_ggml(t, kv) for t in tensors]
    as_f16 = sum(1 for t in tensors if "dequantized" in t.note)
    if as_f16:
        plan.notes.append(f"{as_f16} quantized tensors could not keep their bytes (stored reshaped for "
                          "ComfyUI, or recombined from another layout): written as F16")
    plan.outputs.append(OutputFile(output_name, None, "original", tensors, format="gguf", gguf_arch=spec.gguf_arch,
                                   kv=kv))
    plan.notes.append(f"one GGUF bundle, every component under the family's bundle prefix: sd -m {output_name}")
    return plan


def _as_stored(ckpt, t: TensorOp) -> TensorOp:
    """A tensor of the GGUF bundle: a quantized source read as it lies in its file keeps its bytes
    and type; one that cannot (a conv stored as 256-wide rows, a q/k/v recombined) is written F16;
    plain dtypes stay as they are (integers as F32: GGUF loaders take float weights)."""
    sources = t.expr.sources()
    if all(ckpt.tensors[n].dtype in DTYPES for n in sources):  # plain source dtypes
        return t if t.dtype in ("F32", "F16", "BF16") else replace(t, dtype="F32", note="stored as F32")
    layout = ckpt.stored_layout(sources[0]) if t.expr.op == "src" else None
    if layout is not None and unit_dims_trimmed(layout[1]) == unit_dims_trimmed(t.shape):
        return replace(t, dtype=layout[0], stored=True, note="quantized bytes kept")
    return replace(t, dtype="F16", note="dequantized: not stored in this layout")

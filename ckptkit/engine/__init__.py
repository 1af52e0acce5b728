"""The engine every command writes through: plan, then execute.

  expr.py     tensor expressions over source names (copy, slice, concat, reshape, made tensors)
  plan.py     Plan / OutputFile / TensorOp: what will be written, as data (--dry-run, --json)
  ops.py      TensorOps for a planner: each output's expression, source dtype and target dtype
  produce.py  evaluating planned tensors from a lazily read source, a few ahead on a pool
  execute.py  the executor: streams each output file (safetensors here, GGUF via gguf_out.py),
              hashed while written, renamed into place when complete
  manifest.py ckptkit.json: what was written, from what, with hashes

Planners (convert/split.py, merge.py, convert.py, trigflow.py, quant/plan.py) build plans from
the registry (families/, convert/components.py); nothing here knows a model family.
"""

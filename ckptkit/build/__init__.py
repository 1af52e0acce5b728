"""`ckptkit build RECIPE.toml`: many variants of many checkpoints, split once, quantized, verified,
skipped when current; here, on worker processes or as Ray tasks.

recipe.py (the recipe file), plan.py (what is current, what will run, memory), jobs.py (one split or
variant, the same code everywhere), run.py (local runner), ray_tasks.py (Ray), commands.py (CLI).
"""

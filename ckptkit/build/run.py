"""`ckptkit build`: plan (build/plan.py), then run the jobs that are not current: the splits they
need first, then the variants, here one after another, on worker processes (`--jobs N`, at most
as many at once as the memory budget holds, by each job's planned peak), or as Ray tasks
(build/ray_tasks.py). A job that fails is reported; the others go on.
"""

from __future__ import annotations

import time
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from dataclasses import dataclass, field
from typing import Callable

from ckptkit.build.jobs import summary_line
from ckptkit.build.plan import BuildPlan, VariantJob, plan_build
from ckptkit.build.recipe import Recipe
from ckptkit.errors import CkptError


@dataclass
class BuildResult:
    plan: BuildPlan
    results: dict[str, dict] = field(default_factory=dict)  # job key -> build record (or {"error": ...})
    seconds: float = 0.0

    @property
    def exit_code(self) -> int:
        """0 every variant passed; 1 one did not pass verify; 2 one could not be made (an error)."""
        if any("error" in r for r in self.results.values()):
            return 2
        failed = [j for j in self.plan.jobs if j.status == "failed"]
        return 1 if failed or any(not r["verify"]["passed"] for r in self.results.values()) else 0

    def to_json(self) -> dict:
        return {"plan": self.plan.to_json(), "results": self.results, "seconds": round(self.seconds, 3),
                "exit_code": self.exit_code}


Say = Callable[[str], None]


def run_build(recipe: Recipe, *, jobs: int = 1, workers: int = 1, memory_limit: int | None = None,
              dry_run: bool = False, ray: str | None = None, say: Say | None = None, progress=None) -> BuildResult:
    """`ray`: None to run here, "" for a local Ray instance, or a cluster address."""
    say = say or (lambda _m: None)
    started = time.perf_counter()
    plan = plan_build(recipe, workers, memory_limit)
    result = BuildResult(plan)
    if dry_run:
        return result
    todo = plan.to_run()
    for j in plan.jobs:
        if j.status != "run":
            say(f"{j.key}: {j.status} ({j.reason})")
    if ray is not None:
        from ckptkit.build.ray_tasks import run_on_ray

        result.results = run_on_ray(plan, workers, ray, say)
    else:
        for s in plan.splits:
            if s.status == "run":
                say(f"{s.source.name}: split ({s.reason})")
                from ckptkit.build.jobs import run_split

                run_split(s.spec(workers))
        if jobs <= 1 or len(todo) <= 1:
            for i, job in enumerate(todo, 1):
                result.results[job.key] = _here(job, plan, workers, say, progress, i, len(todo))
        else:
            result.results = _pool(plan, todo, jobs, workers, say)
    result.seconds = time.perf_counter() - started
    return result


def _here(job: VariantJob, plan: BuildPlan, workers: int, say: Say, progress, i: int, total: int) -> dict:
    from ckptkit.build.jobs import run_variant

    say(f"[{i}/{total}] {job.key}: quantize and verify ({job.reason})")
    try:
        record = run_variant(job.spec(plan.recipe, workers), progress)
    except CkptError as exc:
        record = {"error": str(exc)}
    say(summary_line(job.key, record, i, total))
    return record


def _pool(plan: BuildPlan, todo: list[VariantJob], jobs: int, workers: int, say: Say) -> dict[str, dict]:
    """Up to `jobs` variants at once, each in a process of its own, never more than the budget holds
    by their planned peaks (a job over the budget alone runs alone). A process per job, not a pool:
    a job's memory goes back to the system when it ends (a pooled worker keeps its heap's high-water
    mark, which the budget does not count), and a worker killed midway (out of memory, a signal)
    fails its own job only; the next build makes that one again."""
    import multiprocessing

    from ckptkit.build.jobs import run_variant
    from ckptkit.units import human_bytes

    budget = plan.budget
    results: dict[str, dict] = {}
    queue = list(todo)
    running: dict = {}  # future -> (job, its one-process executor)
    done = 0
    ctx = multiprocessing.get_context("spawn")  # a fresh interpreter: no torch threads or locks forked
    try:
        while queue or running:
            held = sum(j.memory for j, _ in running.values())
            while queue and len(running) < jobs:
                job = queue[0]
                if running and budget is not None and held + job.memory > budget:
                    break
                queue.pop(0)
                if budget is not None and job.memory > budget:
                    say(f"{job.key}: planned peak {human_bytes(job.memory)} exceeds the budget "
                        f"{human_bytes(budget)} ({plan.budget_source}); running it alone")
                say(f"{job.key}: started ({job.reason}; planned peak {human_bytes(job.memory)})")
                executor = ProcessPoolExecutor(max_workers=1, mp_context=ctx)
                running[executor.submit(run_variant, job.spec(plan.recipe, workers))] = (job, executor)
                held += job.memory
            finished, _ = wait(running, return_when=FIRST_COMPLETED)
            for fut in finished:
                job, executor = running.pop(fut)
                executor.shutdown(wait=True)
                try:
                    record = fut.result()
                except CkptError as exc:
                    record = {"error": str(exc)}
                except Exception as exc:  # its process died (killed, out of memory): this job's failure
                    record = {"error": f"its process ended without a result ({type(exc).__name__}); the next "
                                       "build makes it again"}
                results[job.key] = record
                done += 1
                say(summary_line(job.key, record, done, len(todo)))
    finally:
        for _, executor in running.values():
            executor.shutdown(wait=False, cancel_futures=True)
    return results

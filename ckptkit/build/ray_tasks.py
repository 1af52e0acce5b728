"""`ckptkit build --ray [ADDRESS]`: the same jobs (build/jobs.py) as Ray tasks, on a local Ray
instance or a cluster whose nodes see the same filesystem paths (the recipe's sources and `out`).

Each split is a task; each variant is a task that waits for its source's split, asks Ray for its
planned peak as its `memory` resource (build/plan.py), and is retried by Ray if its worker dies
(killed, out of memory, node lost); a retried job starts its folder again (jobs write through a
staging folder and write build.json last). A job that raises a ckptkit error is not retried: the
same input gives the same error. Ray is an optional extra: `pip install 'ckptkit[ray]'`.
"""

from __future__ import annotations

from ckptkit.build.plan import BuildPlan
from ckptkit.errors import CkptError

RETRIES = 3


def _ray():
    try:
        import ray
    except ImportError:
        raise CkptError("--ray needs Ray, which is not installed: pip install 'ckptkit[ray]' "
                        "(or run without --ray: the same jobs run here)") from None
    return ray


def _split_task(spec: dict) -> dict:
    from ckptkit.build.jobs import run_split

    return run_split(spec)


def _variant_task(spec: dict, _split_done) -> dict:
    """`_split_done`: the split task's result; Ray runs this task only once the split has finished."""
    from ckptkit.build.jobs import run_variant

    try:
        return run_variant(spec)
    except CkptError as exc:  # the job's own failure: reported, not retried
        return {"error": str(exc)}


def run_on_ray(plan: BuildPlan, workers: int, address: str, say) -> dict[str, dict]:
    from ckptkit.build.jobs import summary_line
    from ckptkit.units import human_bytes

    ray = _ray()
    started_here = not ray.is_initialized()
    if started_here:
        try:
            ray.init(address=address or None, include_dashboard=False, log_to_driver=False,
                     configure_logging=False)
        except Exception as exc:  # no cluster at ADDRESS, a version mismatch, ...: one line
            text = str(exc).strip().splitlines()
            raise CkptError(f"--ray {address or '(local)'}: Ray did not start or connect: "
                            f"{text[0] if text else type(exc).__name__}") from None
    try:
        capacity = ray.cluster_resources().get("memory")
        todo = plan.to_run()
        for job in todo:  # a request no node can meet would wait forever: refuse it now
            if capacity is not None and job.memory > capacity:
                raise CkptError(f"{job.key}: planned peak {human_bytes(job.memory)} exceeds the Ray cluster's "
                                f"memory resource {human_bytes(capacity)}")
        split_fn = ray.remote(num_cpus=1, max_retries=RETRIES)(_split_task)
        variant_fn = ray.remote(_variant_task)
        splits = {}
        for s in plan.splits:
            if s.status == "run":
                say(f"{s.source.name}: split ({s.reason}) as a Ray task")
                splits[s.source.name] = split_fn.remote(s.spec(workers))
        refs = {}
        for job in todo:
            options = {"num_cpus": workers, "max_retries": RETRIES, "retry_exceptions": False}
            if job.memory:
                options["memory"] = job.memory
            refs[variant_fn.options(**options).remote(job.spec(plan.recipe, workers),
                                                      splits.get(job.source.name))] = job
            say(f"{job.key}: submitted ({job.reason}; memory {human_bytes(job.memory)})")
        results: dict[str, dict] = {}
        pending = list(refs)
        while pending:
            done, pending = ray.wait(pending, num_returns=1)
            job = refs[done[0]]
            try:
                record = ray.get(done[0])
            except ray.exceptions.RayError as exc:  # retries spent, or the split failed
                cause = getattr(exc, "cause", None)
                record = {"error": str(cause if isinstance(cause, CkptError) else exc).strip().splitlines()[-1]}
            results[job.key] = record
            say(summary_line(job.key, record, len(results), len(todo)))
        return results
    finally:
        if started_here:
            ray.shutdown()

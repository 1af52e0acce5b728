"""`ckptkit verify` on a real-shape SDXL: a Q8_0 component set against its fp16 bundle, the 1-step
check included, on the CPU in float32 (results: docs/BENCHMARKS.md, "## Verify: ...").

Inputs (built once, kept in --workdir, default bench/out/verify, which is git-ignored):

  sdxl_base.safetensors  the SDXL base bundle with every component (UNet, CLIP-L, OpenCLIP bigG,
                         VAE): real names and shapes from ../shared/manifests/sdxl_base.json, random
                         N(0, 0.02) F16 weights (bench_clients.manifest_specs / write_file), 6.9 GB
  sdxl_base.q8_0/        `ckptkit quantize sdxl_base.safetensors -o sdxl_base.q8_0 --type q8_0`
                         (the default client's component set; written under another name and
                         renamed when complete, so a folder by this name is always whole)

Measured, --runs times (alternating which tree goes first when there is a baseline):

  ckptkit verify Q8DIR --against BUNDLE --device cpu --dtype fp32 --report REPORTDIR --quiet

(`--dtype float32` and no `--quiet` for a tree whose `verify --help` lacks them), each run as its own
process: wall time, peak RSS, exit code, and the phase timings of REPORTDIR/report.json (integrity,
layout, coverage, numeric, onestep, total; the 1-step check's load / dequantize / forward per side).
With --baseline REV the same command also runs from a git worktree of REV (kept in the workdir)
with PYTHONPATH pointing at it and the same interpreter and venv, so both are measured on the same
machine in one go; ratios are current / baseline.

    python bench/bench_verify.py [--runs 2] [--baseline a694858] [--workdir bench/out/verify]
                                 [--build-only] [--rebuild] [--snapshot] [--timeout 3600] [--write-doc]

The page cache is warmed (both inputs read) before every run: warm-cache figures. Logs of each run
(its stdout and stderr) and its report folder stay in WORKDIR/runs/; the figures in WORKDIR/results.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import shutil
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
sys.path.insert(0, str(ROOT))

from bench_clients import MANIFESTS, manifest_specs, write_file  # noqa: E402
from benchdoc import WRAPPER, write_section  # noqa: E402

HEADING = "## Verify: real-shape SDXL Q8_0 set against its fp16 bundle (1-step check, CPU, float32)"
GOAL_S = 120.0  # the whole verify, the 1-step check included, in under 2 minutes
GOAL_RSS = 4e9  # and under 4 GB (10^9 bytes) of peak RSS, in float32
PHASES = ("integrity", "layout", "coverage", "numeric", "onestep", "total")
STEPS = ("load", "dequantize", "forward")
GB = 1e9

# Peak RSS: the kernel's own high-water mark, read by a fresh wrapper process that only starts the
# verify and waits for it: resource.getrusage(RUSAGE_CHILDREN).ru_maxrss of the wrapper is the
# largest peak RSS of any of its (waited-for) descendants. It is exact (updated on every page fault,
# so a peak that lasts a millisecond, such as a transient float32 copy of a 1.3 GB tensor, counts),
# where a 50 ms poll of RSS can miss it and so reads low. A fresh wrapper is needed because
# RUSAGE_CHILDREN of this script would also hold the quantize run and earlier verify runs. Its one
# limit: it is a per-process maximum, not the peak of a sum, so it would read low for a verify that
# worked in several processes at once. `ckptkit verify` is one process (torch's intra-op workers are
# threads of it; nothing in ckptkit/verify starts a subprocess or a multiprocessing pool), so for it
# the peak of the process tree is the peak of that process. To keep that assumption checked, this
# script also samples the tree every 50 ms (the sum of VmRSS over the wrapper's descendants, from
# /proc: psutil is not in the venv) and reports how many processes it saw and the sampled peak; a
# sampled peak above ru_maxrss (or more than one process) means the assumption broke, and is printed.


# --- the inputs ----------------------------------------------------------------------------------

def dir_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def git(*args: str, cwd: Path = ROOT) -> str:
    return subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, check=True).stdout.strip()


def build_inputs(workdir: Path, rebuild: bool) -> dict:
    bundle, q8 = workdir / "sdxl_base.safetensors", workdir / "sdxl_base.q8_0"
    stamp = workdir / "inputs.json"
    if rebuild:
        bundle.unlink(missing_ok=True)
        shutil.rmtree(q8, ignore_errors=True)
        stamp.unlink(missing_ok=True)
    info = json.loads(stamp.read_text()) if stamp.exists() and bundle.exists() and q8.is_dir() else {}
    if not bundle.exists():  # SafetensorsWriter writes atomically: a file by this name is whole
        shutil.rmtree(q8, ignore_errors=True)  # a set quantized from an earlier bundle is stale
        specs = manifest_specs("sdxl_base")
        t0 = time.perf_counter()
        print(f"writing {bundle} ({len(specs)} tensors, random F16 weights)", flush=True)
        write_file(bundle, specs, "F16")
        info = {"bundle_build_s": round(time.perf_counter() - t0, 1), "tensors": len(specs),
                "params": sum(_numel(s) for _, s, _ in specs)}
        print(f"  {bundle.stat().st_size / GB:.2f} GB in {info['bundle_build_s']:.0f} s", flush=True)
    if not q8.is_dir():
        tmp = workdir / "sdxl_base.q8_0.partial"
        shutil.rmtree(tmp, ignore_errors=True)
        cmd = [sys.executable, "-m", "ckptkit.cli", "quantize", str(bundle), "-o", str(tmp), "--type", "q8_0"]
        print(f"quantizing: ckptkit {' '.join(cmd[3:])}", flush=True)
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, cwd=ROOT, env=dict(os.environ, PYTHONPATH=str(ROOT)), capture_output=True, text=True)
        if proc.returncode != 0:
            raise SystemExit(f"quantize failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
        tmp.rename(q8)
        info.update(quantize_s=round(time.perf_counter() - t0, 1), quantized_by=git("rev-parse", "--short", "HEAD")
                    + ("+dirty" if git("status", "--porcelain", "--", "ckptkit") else ""),
                    quantize_output=proc.stdout.strip().splitlines()[-12:])
        print(f"  {dir_bytes(q8) / GB:.2f} GB in {info['quantize_s']:.0f} s", flush=True)
    info.update(bundle=str(bundle), q8=str(q8), bundle_bytes=bundle.stat().st_size, q8_bytes=dir_bytes(q8),
                q8_files={p.name: p.stat().st_size for p in sorted(q8.iterdir()) if p.is_file()})
    stamp.write_text(json.dumps(info, indent=2))
    return info


def _numel(shape) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


def baseline_tree(workdir: Path, rev: str) -> tuple[Path, str]:
    """A git worktree of `rev` (detached) in the workdir, reused while it is at that commit."""
    sha = git("rev-parse", "--verify", f"{rev}^{{commit}}")
    tree = workdir / f"baseline-{sha[:10]}"
    if tree.is_dir():
        if (tree / ".git").exists() and git("rev-parse", "HEAD", cwd=tree) == sha:
            return tree, sha
        subprocess.run(["git", "worktree", "remove", "--force", str(tree)], cwd=ROOT, capture_output=True)
        shutil.rmtree(tree, ignore_errors=True)
    subprocess.run(["git", "worktree", "prune"], cwd=ROOT, check=True)
    subprocess.run(["git", "worktree", "add", "--detach", str(tree), sha], cwd=ROOT, check=True,
                   capture_output=True, text=True)
    return tree, sha


def build_kernels(tree: Path) -> None:
    """The C extension (ckptkit.quant.ggml._kernels) built in place, as the editable install
    builds it in this checkout: a fresh worktree has only its source."""
    if not any((tree / "ckptkit" / "quant" / "ggml").glob("_kernels*.so")):
        print(f"building the C kernels in {tree}", flush=True)
        proc = subprocess.run([sys.executable, "setup.py", "build_ext", "--inplace"], cwd=tree,
                              capture_output=True, text=True)
        if proc.returncode != 0:
            raise SystemExit(f"build_ext in {tree} failed:\n{proc.stderr[-3000:]}")


# --- one tree's verify command -------------------------------------------------------------------

class Tree:
    """The ckptkit source a verify runs from: this checkout, or a baseline worktree."""

    def __init__(self, label: str, path: Path, rev: str):
        self.label, self.path, self.rev = label, path, rev
        self.env = dict(os.environ, PYTHONPATH=str(path))
        # the editable install's finder comes after PYTHONPATH on sys.path; make sure of it
        where = subprocess.run([sys.executable, "-c", "import ckptkit, ckptkit.quant.ggml, ckptkit.verify; "
                                "print(ckptkit.__file__)"], cwd=path,
                               env=self.env, capture_output=True, text=True, check=True).stdout.strip()
        if Path(where).resolve().parent != (path / "ckptkit").resolve():
            raise SystemExit(f"{label}: ckptkit imports from {where}, not from {path}")
        help_text = subprocess.run([sys.executable, "-m", "ckptkit.cli", "verify", "--help"], cwd=path,
                                   env=self.env, capture_output=True, text=True, check=True).stdout
        self.dtype = "fp32" if "fp32" in help_text else "float32"
        self.quiet = "--quiet" in help_text

    def args(self, q8: Path, bundle: Path, report: Path) -> list[str]:
        return ["verify", str(q8), "--against", str(bundle), "--device", "cpu", "--dtype", self.dtype,
                "--report", str(report), *(["--quiet"] if self.quiet else [])]

    def shown(self) -> str:
        return " ".join(["ckptkit", *self.args(Path("Q8DIR"), Path("BUNDLE"), Path("REPORTDIR"))])


# --- measuring -----------------------------------------------------------------------------------

def warm(*paths: Path) -> None:
    for path in paths:
        for f in ([path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())):
            with open(f, "rb", buffering=0) as fh:
                buf = bytearray(64 << 20)
                while fh.readinto(buf):
                    pass


def _proc_table() -> dict[int, tuple[int, int]]:
    """pid -> (ppid, resident bytes), from /proc."""
    page = os.sysconf("SC_PAGE_SIZE")
    out = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat") as fh:
                stat = fh.read()
            with open(f"/proc/{entry.name}/statm") as fh:
                rss = int(fh.read().split()[1]) * page
        except (OSError, IndexError, ValueError):
            continue
        out[int(entry.name)] = (int(stat[stat.rindex(")") + 2:].split()[1]), rss)
    return out


class TreeSampler(threading.Thread):
    """Every 50 ms: the summed RSS of `root`'s descendants (not `root`, the wrapper, itself)."""

    def __init__(self, root: int):
        super().__init__(daemon=True)
        self.root, self.peak, self.pids, self.stop = root, 0, set(), threading.Event()

    def run(self) -> None:
        while not self.stop.wait(0.05):
            table = _proc_table()
            kids: dict[int, list[int]] = {}
            for pid, (ppid, _) in table.items():
                kids.setdefault(ppid, []).append(pid)
            todo, total = list(kids.get(self.root, [])), 0
            while todo:
                pid = todo.pop()
                self.pids.add(pid)
                total += table[pid][1]
                todo += kids.get(pid, [])
            self.peak = max(self.peak, total)


def measure(tree: Tree, q8: Path, bundle: Path, run_dir: Path, timeout: float) -> dict:
    report = run_dir / "report"
    shutil.rmtree(run_dir, ignore_errors=True)
    run_dir.mkdir(parents=True)
    warm(bundle, q8)
    result_file = run_dir / "rusage.json"
    cmd = [sys.executable, "-c", WRAPPER, str(result_file), sys.executable, "-m", "ckptkit.cli",
           *tree.args(q8, bundle, report)]
    load = os.getloadavg()[0]
    with open(run_dir / "log.txt", "w") as log:
        proc = subprocess.Popen(cmd, cwd=tree.path, env=tree.env, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)
        sampler = TreeSampler(proc.pid)
        sampler.start()
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, 9)  # the group this run started (start_new_session), nothing else
            proc.wait()
        sampler.stop.set()
        sampler.join()
    log_text = (run_dir / "log.txt").read_text(errors="replace")
    if not result_file.exists():
        r = {"rc": "timeout" if proc.returncode == -9 else proc.returncode, "wall_s": None, "peak_rss": None,
             "cpu_s": None}
    else:
        r = json.loads(result_file.read_text())
    r.update(sampled_tree_peak=sampler.peak, processes=len(sampler.pids), load_before=load,
             message=[ln for ln in log_text.splitlines() if ln.strip()][-3:],
             crashed="Traceback (most recent call last)" in log_text)  # an exception, not a verdict
    rep_file = report / "report.json"
    if rep_file.exists():
        rep = json.loads(rep_file.read_text())
        r["timings"] = rep.get("timings", {})
        r["passed"] = rep.get("passed")
        ost = (rep.get("onestep") or {}).get("timings") or {}
        r["onestep"] = {side: {step: round(sum(ost[side].get(step, {}).values()), 3) for step in STEPS}
                        for side in ("reference", "candidate") if isinstance(ost.get(side), dict)}
        r["onestep_detail"] = ost
        r["failed"] = [f"{x.get('check')} {x.get('component') or '-'} {x.get('metric')}"
                       for x in rep.get("results", []) if x.get("passed") is False][:10]
    if r.get("peak_rss") and (sampler.peak > r["peak_rss"] * 1.02 or len(sampler.pids) > 1):
        print(f"  NOTE: {len(sampler.pids)} processes seen, sampled tree peak {sampler.peak / GB:.2f} GB vs "
              f"ru_maxrss {r['peak_rss'] / GB:.2f} GB: verify is no longer one process; peak RSS below is the "
              "larger of the two", flush=True)
        r["peak_rss"] = max(r["peak_rss"], sampler.peak)
    return r


def phase_keys(runs: list[dict]) -> list[str]:
    """The standard phases, then any other key a report's `timings` has (e.g. memory_plan), total last."""
    extra = [k for r in runs for k in r.get("timings", {}) if k not in PHASES]
    return [*PHASES[:-1], *dict.fromkeys(extra), "total"]


def summarize(runs: list[dict]) -> dict:
    def med(values):
        values = [v for v in values if v is not None]
        return statistics.median(values) if values else None

    return {"wall_s": med(r["wall_s"] for r in runs), "peak_rss": med(r["peak_rss"] for r in runs),
            "peak_rss_max": max((r["peak_rss"] for r in runs if r["peak_rss"]), default=None),
            "exit": [r["rc"] for r in runs], "crashed": any(r.get("crashed") for r in runs),
            "timings": {p: med(r.get("timings", {}).get(p) for r in runs) for p in phase_keys(runs)},
            "onestep": {side: {s: med(r.get("onestep", {}).get(side, {}).get(s) for r in runs) for s in STEPS}
                        for side in ("reference", "candidate")}}


# --- reporting -----------------------------------------------------------------------------------

def machine() -> dict:
    meminfo = Path("/proc/meminfo").read_text()
    mem_kb = int(meminfo.split("MemTotal:")[1].split()[0])
    model = next((ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines()
                  if ln.startswith("model name")), platform.processor() or "unknown CPU")
    import torch

    return {"cpus": os.cpu_count(), "affinity": len(os.sched_getaffinity(0)), "cpu_model": model,
            "ram_gib": round(mem_kb / 2**20, 1), "python": platform.python_version(), "torch": torch.__version__,
            "torch_threads": torch.get_num_threads(), "kernel": platform.release(), "date": time.strftime("%Y-%m-%d")}


def fmt_s(v) -> str:
    return "-" if v is None else f"{v:.1f} s" if v < 600 else f"{v:.0f} s ({int(v // 60)} min {v % 60:.0f} s)"


def fmt_gb(v) -> str:
    return "-" if v is None else f"{v / GB:.2f} GB"


def goal_met(s: dict) -> str:
    if s["wall_s"] is None or s["timings"].get("onestep") is None or not all(e in (0, 1) for e in s["exit"]) \
            or s["crashed"]:
        return "no (the 1-step check did not complete)"
    ok_t, ok_m = s["wall_s"] < GOAL_S, s["peak_rss_max"] < GOAL_RSS
    return ("yes" if ok_t and ok_m else "no") + f" (time {'<' if ok_t else '>='} 2 min, peak {'<' if ok_m else '>='} 4 GB)"


def render(results: dict, command: str) -> str:
    m, inp, trees = results["machine"], results["inputs"], results["trees"]
    phases = phase_keys([r for t in trees.values() for r in t["runs"]])
    lines = [HEADING, "",
             f"Command: `{command}` (from the repository root; it builds its inputs in bench/out/verify on "
             f"first use: several minutes). Date {m['date']}.", "",
             f"Machine: {m['cpus']} CPUs ({m['affinity']} usable, {m['cpu_model']}; torch {m['torch_threads']} "
             f"threads), {m['ram_gib']} GiB RAM, Linux {m['kernel']}, Python {m['python']}, torch {m['torch']}. "
             f"1-minute load average {results['load_before']:.1f} at the start, {results['load_after']:.1f} at "
             "the end (a shared machine: wall times are noisier than peak RSS).", "",
             f"Inputs: the SDXL base bundle, every component (UNet, CLIP-L, OpenCLIP bigG, VAE), real names and "
             f"shapes from ../shared/manifests/sdxl_base.json, random N(0, 0.02) F16 weights: "
             f"{inp['bundle_bytes'] / GB:.2f} GB; its Q8_0 component set (`ckptkit quantize BUNDLE -o Q8DIR "
             f"--type q8_0`, quantized by {inp.get('quantized_by', '?')}): {inp['q8_bytes'] / GB:.2f} GB ("
             + ", ".join(f"{n} {b / GB:.2f} GB" for n, b in inp["q8_files"].items() if b > 1e6) + ").", "",
             "Measured: " + "; ".join(f"{t['label']} ({t['rev']}): `{t['command']}`" for t in trees.values())
             + f". Each run is its own process, {results['runs']} run(s) per tree"
             + (", alternating which tree goes first" if len(trees) > 1 else "")
             + ", the page cache warmed (both inputs read) before each; medians. Peak RSS: the kernel's "
               "high-water mark of the verify process (`getrusage(RUSAGE_CHILDREN).ru_maxrss` of a wrapper that "
               "only runs it; verify is one process, checked by sampling the process tree every 50 ms). Phases "
               "from the run's report.json `timings`.", "",
             "Goal: the whole verify, 1-step check included, under 2 min and under 4 GB peak RSS in float32, "
             "on the CPU.", "",
             "| tree | run | exit | wall | CPU | peak RSS | " + " | ".join(phases[:-1]) + " | total (report) |",
             "|---|---:|---|---:|---:|---:|" + "---:|" * len(phases)]
    for t in trees.values():
        for i, r in enumerate(t["runs"], 1):
            tm = r.get("timings", {})
            lines.append(f"| {t['label']} | {i} | {r['rc']}{' (crash)' if r.get('crashed') else ''} | {fmt_s(r['wall_s'])} | {fmt_s(r['cpu_s'])} | "
                         f"{fmt_gb(r['peak_rss'])} | " + " | ".join(fmt_s(tm.get(p)) for p in phases) + " |")
        s = t["median"]
        lines.append(f"| **{t['label']} median** | | {','.join(map(str, s['exit']))} | **{fmt_s(s['wall_s'])}** | | "
                     f"**{fmt_gb(s['peak_rss'])}** | " + " | ".join(fmt_s(s['timings'].get(p)) for p in phases) + " |")
    lines += ["", "1-step check, summed over components (median; from report.json `onestep.timings`):", "",
              "| tree | side | load | dequantize | forward |", "|---|---|---:|---:|---:|"]
    for t in trees.values():
        for side, steps in t["median"]["onestep"].items():
            if any(v is not None for v in steps.values()):
                lines.append(f"| {t['label']} | {side} | " + " | ".join(fmt_s(steps[s]) for s in STEPS) + " |")
    lines.append("")
    cur = trees["current"]["median"]
    if "baseline" in trees:
        base = trees["baseline"]["median"]
        if cur["wall_s"] and base["wall_s"]:
            lines.append(f"Ratios, current / baseline: wall time {cur['wall_s'] / base['wall_s']:.2f}x, "
                         f"peak RSS {cur['peak_rss'] / base['peak_rss']:.2f}x"
                         + (" (the baseline exited " + ",".join(map(str, base["exit"])) + ": it did not finish "
                            "the 1-step check, so its time is that of a refusal, not of a whole verify)"
                            if any(e not in (0, 1) for e in base["exit"]) else "") + ".")
        lines.append("")
    for t in trees.values():
        msgs = {" / ".join(r["message"][-1:]) for r in t["runs"] if r["rc"] not in (0,)}
        fails = {", ".join(r.get("failed", [])) for r in t["runs"] if r.get("failed")}
        if msgs:
            lines.append(f"- {t['label']}: last line of a non-zero run: " + "; ".join(f"`{m}`" for m in msgs)
                         + (f" (failed checks: {'; '.join(fails)})" if fails else ""))
    lines += [f"- Goal met by current: {goal_met(cur)}.", ""]
    return "\n".join(lines)


# --- main ----------------------------------------------------------------------------------------

def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=2, help="runs per tree (default 2)")
    ap.add_argument("--baseline", metavar="REV", help="also run the verify of this commit (a git worktree)")
    ap.add_argument("--workdir", type=Path, default=ROOT / "bench" / "out" / "verify")
    ap.add_argument("--build-only", action="store_true", help="build the inputs and stop")
    ap.add_argument("--rebuild", action="store_true", help="build the inputs again")
    ap.add_argument("--snapshot", action="store_true",
                    help="run the current tree from a copy of its ckptkit/ taken at the start (WORKDIR/snapshot), "
                         "so that edits made while it runs do not mix into a measurement")
    ap.add_argument("--timeout", type=float, default=3600, help="seconds per verify run before it is killed")
    ap.add_argument("--write-doc", action="store_true", help="replace this benchmark's section in docs/BENCHMARKS.md")
    args = ap.parse_args()
    workdir = args.workdir.resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    if not (MANIFESTS / "sdxl_base.json").exists():
        raise SystemExit(f"{MANIFESTS / 'sdxl_base.json'} not found")
    inputs = build_inputs(workdir, args.rebuild)
    bundle, q8 = Path(inputs["bundle"]), Path(inputs["q8"])
    print(f"bundle {bundle} ({inputs['bundle_bytes'] / GB:.2f} GB); Q8_0 set {q8} ({inputs['q8_bytes'] / GB:.2f} GB)",
          flush=True)
    if args.build_only:
        return
    head = git("rev-parse", "--short", "HEAD") + ("+dirty" if git("status", "--porcelain", "--", "ckptkit") else "")
    current = ROOT
    if args.snapshot:
        current = workdir / "snapshot"
        shutil.rmtree(current, ignore_errors=True)
        shutil.copytree(ROOT / "ckptkit", current / "ckptkit", ignore=shutil.ignore_patterns("__pycache__", "*.so"))
        for so in (ROOT / "ckptkit").rglob("*.so"):  # the built C kernels, if any
            shutil.copy2(so, current / so.relative_to(ROOT))
        head += time.strftime(" (snapshot %H:%M:%S)")
    trees = {"current": Tree("current", current, head)}
    if args.baseline:
        path, sha = baseline_tree(workdir, args.baseline)
        build_kernels(path)
        trees["baseline"] = Tree("baseline", path, sha[:7])
    results = {"machine": machine(), "inputs": inputs, "runs": args.runs, "load_before": os.getloadavg()[0],
               "trees": {k: {"label": t.label, "rev": t.rev, "path": str(t.path), "command": t.shown(), "runs": []}
                         for k, t in trees.items()}}
    for i in range(args.runs):
        order = list(trees) if i % 2 == 0 else list(reversed(trees))
        for key in order:
            t = trees[key]
            print(f"run {i + 1}/{args.runs} {key} ({t.rev}): {t.shown()}", flush=True)
            r = measure(t, q8, bundle, workdir / "runs" / f"{key}-{i + 1}", args.timeout)
            results["trees"][key]["runs"].append(r)
            tm = r.get("timings", {})
            print(f"  exit {r['rc']}{' (crashed: a traceback, not a verdict)' if r['crashed'] else ''}, {fmt_s(r['wall_s'])} wall, {fmt_s(r['cpu_s'])} CPU, peak RSS {fmt_gb(r['peak_rss'])}"
                  f" (sampled tree {fmt_gb(r['sampled_tree_peak'])}, {r['processes']} process(es)); phases: "
                  + (", ".join(f"{p} {v:.1f} s" for p, v in tm.items()) or "no report.json")
                  + (f"; 1-step {r['onestep']}" if r.get("onestep") else ""), flush=True)
            if r["rc"] != 0:
                print("  " + "\n  ".join(r["message"]), flush=True)
    for t in results["trees"].values():
        t["median"] = summarize(t["runs"])
    results["load_after"] = os.getloadavg()[0]
    (workdir / "results.json").write_text(json.dumps(results, indent=2))
    command = shlex.join(["python", "bench/bench_verify.py", "--runs", str(args.runs),
                          *(["--baseline", args.baseline] if args.baseline else []), "--write-doc"])
    section = render(results, command)
    print("\n" + section)
    if args.write_doc:
        write_section(HEADING, section)
        print("wrote docs/BENCHMARKS.md")


if __name__ == "__main__":
    main()

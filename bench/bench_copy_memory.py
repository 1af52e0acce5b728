"""Peak memory and wall time of copying a big safetensors file three ways:

  (a) `cp` (plus `sync` of the copy, since the other two fsync too),
  (b) ckptkit: open_checkpoint, then SafetensorsWriter, one lazily loaded tensor at a time,
  (c) the naive route: safetensors.torch.load_file + save_file (then fsync).

Each route runs in its own subprocess under `/usr/bin/time -v` (peak RSS = its "Maximum resident
set size"); the source file is read once beforehand so every route starts with a warm page cache.
Route (b) also runs on a smaller file with the same largest tensor, to show that its peak does not
grow with the file. Results go to stdout and to docs/BENCHMARKS.md.

    python bench/bench_copy_memory.py [--workdir bench/out] [--size-gib 4] [--small-gib 1]
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import re
import shlex
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

from benchdoc import DOC, write_section  # bench/ is on sys.path when this runs as a script

ROOT = Path(__file__).resolve().parents[1]
SECTION = "## Copy through reader -> writer: peak memory"
MB = 1e6
GIB = 2**30
HIDDEN = 4096
BIG = [("embed.weight", (23040, HIDDEN)), ("head.weight", (16384, HIDDEN))]  # 189 MB and 134 MB in fp16


# --- the synthetic file --------------------------------------------------------------------------

def layout(target_bytes: int) -> list[tuple[str, tuple[int, ...]]]:
    """A transformer-like fp16 layout: two big embeddings, then blocks of six 4096x4096 matrices
    (32 MiB each) with their biases and norms, until the file reaches `target_bytes`."""
    specs = list(BIG)
    total = sum(2 * a * b for _, (a, b) in specs)
    block = 0
    while total < target_bytes:
        for part in ("attn.q", "attn.k", "attn.v", "attn.o", "mlp.up", "mlp.down"):
            specs += [(f"blocks.{block}.{part}.weight", (HIDDEN, HIDDEN)), (f"blocks.{block}.{part}.bias", (HIDDEN,))]
            total += 2 * (HIDDEN * HIDDEN + HIDDEN)
        specs.append((f"blocks.{block}.norm.weight", (HIDDEN,)))
        total += 2 * HIDDEN
        block += 1
    return specs


def build(path: Path, target_bytes: int) -> tuple[int, int, int]:
    """Stream the file out with SafetensorsWriter; returns (file size, tensor count, largest tensor bytes).
    Every tensor is a slice of one random fp16 pool the size of the largest tensor, so building
    needs no more memory than that."""
    import torch

    from ckptkit.formats.safetensors import SafetensorsWriter

    specs = layout(target_bytes)
    largest = max(2 * torch.Size(shape).numel() for _, shape in specs)
    pool = torch.randn(largest // 2, generator=torch.Generator().manual_seed(0)).half()
    with SafetensorsWriter(path, [(n, "F16", s) for n, s in specs], {"bench": "copy-memory"}) as writer:
        for i, (name, shape) in enumerate(specs):
            numel = torch.Size(shape).numel()
            start = (i * 7919) % (pool.numel() - numel + 1)
            writer.write(name, pool[start : start + numel].view(shape))
    return path.stat().st_size, len(specs), largest


# --- the routes, each run in a subprocess of this script -----------------------------------------

def copy_ckptkit(src: str, dst: str) -> None:
    from ckptkit.formats import open_checkpoint
    from ckptkit.formats.safetensors import SafetensorsWriter

    with open_checkpoint(src) as ckpt:
        specs = [(n, i.dtype, i.shape) for n, i in ckpt.tensors.items()]
        with SafetensorsWriter(dst, specs, ckpt.metadata) as writer:  # fsyncs, then renames
            for name in ckpt:
                writer.write(name, ckpt.load(name))


def copy_naive(src: str, dst: str) -> None:
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    with safe_open(src, framework="pt") as f:
        metadata = f.metadata()
    save_file(load_file(src), dst, metadata=metadata)
    with open(dst, "rb+") as fh:
        os.fsync(fh.fileno())


def open_only(src: str, dst: str) -> None:
    """The constant: interpreter + torch + ckptkit imported, header parsed, nothing copied."""
    from ckptkit.formats import open_checkpoint

    with open_checkpoint(src) as ckpt:
        assert len(ckpt) > 0


ROUTES = {"ckptkit": copy_ckptkit, "naive": copy_naive, "open-only": open_only}


# --- measuring -----------------------------------------------------------------------------------

TIME = shutil.which("time", path="/usr/bin")
# Fallback without GNU time: a wrapper that reports its children's peak RSS the same way.
RUSAGE_WRAPPER = ("import resource, subprocess, sys; rc = subprocess.run(sys.argv[1:]).returncode; "
                  "print('Maximum resident set size (kbytes):', resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, "
                  "file=sys.stderr); sys.exit(rc)")


def command_for(route: str, src: Path, dst: Path) -> list[str]:
    if route == "cp":
        return ["sh", "-c", 'cp "$0" "$1" && sync "$1"', str(src), str(dst)]
    return [sys.executable, str(Path(__file__).resolve()), "--run", route, str(src), str(dst)]


def warm(path: Path) -> None:
    with open(path, "rb") as fh:
        while fh.read(64 << 20):
            pass


def measure_once(route: str, src: Path, dst: Path) -> tuple[float, float]:
    """(peak RSS in MB, wall seconds) of one route copying src to dst; dst is removed afterwards."""
    warm(src)
    argv = command_for(route, src, dst)
    argv = [TIME, "-v", *argv] if TIME else [sys.executable, "-c", RUSAGE_WRAPPER, *argv]
    start = time.perf_counter()
    proc = subprocess.run(argv, capture_output=True, text=True, cwd=ROOT)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"{route} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    kbytes = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", proc.stderr).group(1))
    if route != "open-only":
        if dst.stat().st_size <= 0 or (route != "naive" and not same_bytes(src, dst)):
            raise SystemExit(f"{route}: the copy differs from the source")
        dst.unlink()
    return kbytes * 1024 / MB, wall


def same_bytes(a: Path, b: Path) -> bool:
    return subprocess.run(["cmp", "-s", str(a), str(b)]).returncode == 0


def measure(route: str, src: Path, dst: Path, repeat: int) -> dict:
    runs = [measure_once(route, src, dst) for _ in range(repeat)]
    return {"rss_mb": max(r for r, _ in runs), "wall_s": statistics.median(w for _, w in runs)}


# --- reporting -----------------------------------------------------------------------------------

def machine() -> str:
    mem_kb = int(re.search(r"MemTotal:\s+(\d+)", Path("/proc/meminfo").read_text()).group(1))
    import safetensors
    import torch

    return (f"{os.cpu_count()} CPUs (nproc), {mem_kb / 2**20:.1f} GiB RAM, {platform.machine()}, "
            f"Linux {platform.release()}; Python {platform.python_version()}, torch {torch.__version__}, "
            f"safetensors {safetensors.__version__}")


def table(rows: list[tuple[str, str, int, dict]]) -> str:
    """Ratios are against `cp` of the same file."""
    cp = {size: r for route, _, size, r in rows if route == "cp"}
    lines = ["| route | file | peak RSS (MB) | wall (s) | throughput (MB/s) | RSS / cp | time / cp |",
             "|---|---|---:|---:|---:|---:|---:|"]
    for route, label, size, r in rows:
        copies = route != "open-only"
        tput = f"{size / MB / r['wall_s']:.0f}" if copies else "-"
        ratio_t = f"{r['wall_s'] / cp[size]['wall_s']:.2f}" if copies else "-"
        lines.append(f"| {route} | {label} | {r['rss_mb']:.0f} | {r['wall_s']:.2f} | {tput} | "
                     f"{r['rss_mb'] / cp[size]['rss_mb']:.0f}x | {ratio_t} |")
    return "\n".join(lines)


NOTES = """\
Routes: **cp** = `cp SRC DST && sync DST`; **ckptkit** = `open_checkpoint(SRC)`, then
`SafetensorsWriter` writing `ckpt.load(name)` one tensor at a time (the writer fsyncs and renames);
**naive** = `safetensors.torch.load_file` + `save_file` + fsync; **open-only** = the same Python
process as ckptkit (interpreter, torch, ckptkit, header parsed) without copying anything, i.e. the
constant part of ckptkit's peak. Peak RSS is GNU time's "Maximum resident set size" of each
subprocess; wall time is the median of the runs, peak RSS their maximum. The page cache is warmed by
reading the source before every run, so these are warm-cache figures; the copies land in the page
cache and are fsynced by every route. The Python routes' wall times include about a second of
interpreter and torch start-up (the open-only row), which weighs most on the small file.

Why the ckptkit peak stays flat: the reader maps the file (`mmap`, copy-on-write) and hands out
tensors that point into the mapping. Mapped file pages count in RSS once touched, so with one
mapping kept for the whole file the RSS of a full copy grew to the file size (ckptkit at c7c8ebb:
{old}). The reader now gives the pages back (`madvise(MADV_DONTNEED)` on the tensor's
whole pages) as soon as the last reference to a loaded tensor is dropped, so a streaming copy
holds at most the tensor being written: peak = constant + largest tensor, whatever the file size. The naive route
holds every tensor at once (`load_file` returns the whole dict), so its peak is the file size.
"""
OLD_FIGURE = "peak RSS 4,584 MB for the 4,351 MB file, 1,361 MB for the 1,129 MB one"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", type=Path, default=ROOT / "bench" / "out")
    parser.add_argument("--size-gib", type=float, default=4.0, help="size of the big file (default 4)")
    parser.add_argument("--small-gib", type=float, default=1.0, help="size of the small file (default 1)")
    parser.add_argument("--repeat", type=int, default=3, help="runs per route (default 3)")
    parser.add_argument("--keep", action="store_true", help="keep the synthetic files")
    parser.add_argument("--no-doc", action="store_true", help="print only; leave docs/BENCHMARKS.md alone")
    parser.add_argument("--run", nargs=3, metavar=("ROUTE", "SRC", "DST"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.run:
        sys.path.insert(0, str(ROOT))
        route, src, dst = args.run
        ROUTES[route](src, dst)
        return

    command = shlex.join(["python", "bench/bench_copy_memory.py", *sys.argv[1:]])
    load_before = os.getloadavg()[0]
    args.workdir.mkdir(parents=True, exist_ok=True)
    big, small = args.workdir / "bench_big.safetensors", args.workdir / "bench_small.safetensors"
    dst = args.workdir / "bench_copy.safetensors"
    try:
        files, counts = {}, []
        for path, gib in ((big, args.size_gib), (small, args.small_gib)):
            t0 = time.perf_counter()
            size, count, largest = build(path, int(gib * GIB))
            files[path] = size
            counts.append(count)
            print(f"built {path.name}: {size / MB:.0f} MB, {count} tensors, largest {largest / MB:.0f} MB "
                  f"({time.perf_counter() - t0:.1f} s)", flush=True)
        rows = []
        plan = [("cp", big), ("ckptkit", big), ("naive", big), ("cp", small), ("ckptkit", small), ("open-only", big)]
        for route, src in plan:
            result = measure(route, src, dst, args.repeat)
            label = f"{files[src] / MB:,.0f} MB"
            rows.append((route, label, files[src], result))
            print(f"{route:9s} {label:>9s}: peak RSS {result['rss_mb']:7.0f} MB, wall {result['wall_s']:6.2f} s", flush=True)
    finally:
        if not args.keep:
            for path in (big, small, dst):
                path.unlink(missing_ok=True)

    tbl = table(rows)
    section = (f"{SECTION}\n\n"
               f"Command: `{command}` (from the repository root)\n\n"
               f"Machine: {machine()}; {args.workdir} on {filesystem(args.workdir)}; "
               f"1-minute load average {load_before:.1f} at the start, {os.getloadavg()[0]:.1f} at the end "
               f"(a shared machine: wall times are noisier than peak RSS)\n\n"
               f"Date: {datetime.date.today().isoformat()}\n\n"
               f"Files: fp16, {counts[0]} and {counts[1]} tensors "
               f"(mostly 4096x4096 = 33.6 MB); largest tensor {largest / MB:.0f} MB ({BIG[0][1][0]}x{BIG[0][1][1]} fp16). "
               f"{args.repeat} runs per route.\n\n"
               f"{tbl}\n\n{NOTES.format(old=OLD_FIGURE)}")
    print("\n" + tbl)
    if not args.no_doc:
        write_section(SECTION, section)
        print(f"\nwrote {DOC.relative_to(ROOT)}")


def filesystem(path: Path) -> str:
    out = subprocess.run(["df", "-T", str(path)], capture_output=True, text=True).stdout.splitlines()
    return out[-1].split()[1] if len(out) > 1 else "unknown"


if __name__ == "__main__":
    main()

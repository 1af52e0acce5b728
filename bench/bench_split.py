"""`ckptkit split` on real-shape SDXL and FLUX.1 bundles: wall time, throughput and peak RSS
against `cp`, the naive safetensors route and diffusers' own single-file route.

The bundles are built from the key manifests in ../shared/manifests (the real tensor names,
shapes and dtypes of released checkpoints), with random weights, streamed out with
SafetensorsWriter one tensor at a time (never the whole model in RAM):

  sdxl  sd_xl_base_1.0 layout: every component of sdxl_base.json under its prefix, F16 (6.9 GB)
  flux  ComfyUI all-in-one FLUX.1-dev: `model.diffusion_model.` + flux1_dev (BF16), `vae.` + ae
        (F32), `text_encoders.clip_l.transformer.` + clip_l (F16) and, if the disk budget allows,
        `text_encoders.t5xxl.transformer.` + t5xxl (F16)

Routes, each in its own subprocess under `/usr/bin/time -v` (wall, peak RSS, CPU seconds):

  cp                  `cp BUNDLE DST && sync DST` (the disk's limit)
  comfy-w1/-w2        `ckptkit split BUNDLE -o OUT --layout comfy --workers 1|2`
  naive               safetensors.torch.load_file, then save_file per component with the prefix
                      stripped (no OpenCLIP -> transformers conversion), then fsync
  diffusers-w1/-w2    `ckptkit split BUNDLE -o OUT --layout diffusers --workers 1|2`
  diffusers-own       diffusers' route: <Pipeline>.from_single_file(BUNDLE, config=<local config
                      folder>) + save_pretrained(OUT), then fsync (see ROUTE_NOTES)
  (--diagnose) comfy-w2 with the output sha256, the source sha256 or both disabled by monkeypatching
                      in the subprocess: what hashing costs

The page cache is in the same state before every route: `--cache warm` reads the whole bundle
first (possible only when it fits in RAM), `--cache cold` drops the bundle's pages
(posix_fadvise DONTNEED after a sync: only this file's pages, nobody else's); `auto` (default) is
warm when the bundle is under 40 % of RAM. Every route fsyncs what it wrote; a global sync runs
(untimed) between routes. A watchdog kills a route whose anonymous RSS passes --anon-limit-gb or
when the machine's MemAvailable falls under 1.5 GB, and reports it as killed, instead of letting
the machine go out of memory.

    python bench/bench_split.py [--models sdxl,flux] [--workdir bench/out] [--repeat 1]
                                [--t5 auto|yes|no] [--disk-budget-gb 55] [--diagnose] [--profile]
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import platform
import re
import shlex
import shutil
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

from benchdoc import DOC, write_section  # bench/ is on sys.path when this runs as a script

ROOT = Path(__file__).resolve().parents[1]
MANIFESTS = ROOT.parent / "shared" / "manifests"
SECTION = "## Split: real-shape SDXL and FLUX.1 bundles"
GB = 1e9
MB = 1e6
ITEMSIZE = {"F16": 2, "BF16": 2, "F32": 4, "I64": 8}

# model -> [(bundle prefix, manifest file, manifest component, naive output name)]
MODELS = {
    "sdxl": [("model.diffusion_model.", "sdxl_base", "diffusion_model", "diffusion_model"),
             ("conditioner.embedders.0.transformer.", "sdxl_base", "clip_l", "clip_l"),
             ("conditioner.embedders.1.model.", "sdxl_base", "clip_g", "clip_g"),
             ("first_stage_model.", "sdxl_base", "vae", "vae")],
    "flux": [("model.diffusion_model.", "flux1_dev", "transformer", "diffusion_model"),
             ("vae.", "ae", "vae", "vae"),
             ("text_encoders.clip_l.transformer.", "clip_l", "clip_l", "clip_l"),
             ("text_encoders.t5xxl.transformer.", "t5xxl", "t5xxl", "t5xxl")],
}
LABEL = {"sdxl": "SDXL base", "flux": "FLUX.1-dev all-in-one"}


# --- the bundles ---------------------------------------------------------------------------------

def bundle_parts(model: str, with_t5: bool) -> list[tuple[str, str, str, str]]:
    return [p for p in MODELS[model] if with_t5 or p[2] != "t5xxl"]


def bundle_specs(model: str, with_t5: bool) -> list[tuple[str, str, tuple[int, ...]]]:
    """(name, dtype, shape) in the order safetensors' save_file stores them: by alignment
    (widest dtype first), then by name, as a bundle saved by ComfyUI or sgm is."""
    specs = []
    for prefix, manifest, component, _ in bundle_parts(model, with_t5):
        tensors = json.loads((MANIFESTS / f"{manifest}.json").read_text())["components"][component]["tensors"]
        specs += [(prefix + key, dtype, tuple(shape)) for key, (shape, dtype) in tensors.items()]
    return sorted(specs, key=lambda s: (-ITEMSIZE[s[1]], s[0]))


def data_bytes(specs) -> int:
    return sum(math.prod(shape) * ITEMSIZE[dtype] for _, dtype, shape in specs)


def build(path: Path, specs, model: str) -> None:
    """Random weights (N(0, 0.02)), streamed: every tensor is a slice of one random pool per dtype
    a little larger than the largest tensor, at an offset that changes from tensor to tensor."""
    import torch

    from ckptkit.formats.safetensors import SafetensorsWriter

    largest = max(math.prod(shape) for _, _, shape in specs)
    base = torch.randn(largest + (4 << 20), generator=torch.Generator().manual_seed(0)) * 0.02
    pools = {"F32": base, "F16": None, "BF16": None}
    for dtype in {d for _, d, _ in specs}:
        pools[dtype] = {"F32": base, "F16": base.half(), "BF16": base.bfloat16()}[dtype]
    total, done, step = data_bytes(specs), 0, 0
    meta = {"bench": f"bench_split {model}"}
    with SafetensorsWriter(path, specs, meta) as writer:
        for i, (name, dtype, shape) in enumerate(specs):
            numel = math.prod(shape)
            pool = pools[dtype]
            start = (i * 1_000_003) % (pool.numel() - numel + 1)
            writer.write(name, pool[start:start + numel].view(shape))
            done += numel * ITEMSIZE[dtype]
            if shutil.disk_usage(path.parent).free < DISK_FLOOR:
                raise SystemExit(f"stopped building {path.name}: the disk is nearly full")
            if done * 10 // total > step:
                step = done * 10 // total
                print(f"  building {path.name}: {done / GB:5.1f} / {total / GB:.1f} GB", flush=True)


# --- the routes run inside the subprocesses ------------------------------------------------------

def _fsync_tree(folder: str) -> None:
    for dirpath, _, files in os.walk(folder):
        for f in files:
            with open(os.path.join(dirpath, f), "rb+") as fh:
                os.fsync(fh.fileno())


def run_naive(model: str, src: str, out: str, with_t5: str) -> None:
    from safetensors.torch import load_file, save_file

    os.makedirs(out, exist_ok=True)
    state = load_file(src)
    for prefix, _, _, name in bundle_parts(model, with_t5 == "1"):
        part = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
        save_file(part, os.path.join(out, f"{name}.safetensors"))
    _fsync_tree(out)


def run_diffusers_default(model: str, src: str, out: str, config: str) -> None:
    """diffusers' documented call as it stands, no torch_dtype: the models are built in float32."""
    import diffusers

    pipe = diffusers.StableDiffusionXLPipeline.from_single_file(
        src, config=config, local_files_only=True, tokenizer=None, tokenizer_2=None)
    pipe.save_pretrained(out)
    _fsync_tree(out)


def run_diffusers_own(model: str, src: str, out: str, config: str) -> None:
    """Every component loaded in its dtype in the bundle (without torch_dtype diffusers builds the
    models in float32: twice the memory, and twice the bytes written)."""
    import diffusers
    import torch

    if model == "sdxl":  # every component is F16
        pipe = diffusers.StableDiffusionXLPipeline.from_single_file(
            src, config=config, local_files_only=True, torch_dtype=torch.float16, tokenizer=None, tokenizer_2=None)
    else:  # transformer BF16, VAE F32, CLIP-L F16: one from_single_file per dtype
        transformer = diffusers.FluxTransformer2DModel.from_single_file(
            src, config=config, subfolder="transformer", local_files_only=True, torch_dtype=torch.bfloat16)
        vae = diffusers.AutoencoderKL.from_single_file(
            src, config=config, subfolder="vae", local_files_only=True, torch_dtype=torch.float32)
        pipe = diffusers.FluxPipeline.from_single_file(
            src, config=config, local_files_only=True, torch_dtype=torch.float16, transformer=transformer, vae=vae,
            text_encoder_2=None, tokenizer=None, tokenizer_2=None)
    pipe.save_pretrained(out)
    _fsync_tree(out)


def run_split_patched(model: str, src: str, out: str, layout: str, workers: str, what: str) -> None:
    """`ckptkit split` with a part switched off, to measure what it costs: nohash-out (the output
    sha256), nohash-src (the source sha256), nohash (both), noprefault (the reader's
    MADV_POPULATE_READ of each loaded tensor)."""
    from ckptkit import pipeline
    from ckptkit.engine import execute
    from ckptkit.convert.split import SplitOptions
    from ckptkit.formats import safetensors

    if what in ("nohash", "nohash-out"):
        class NoHasher:
            def update(self, data): pass
            def hexdigest(self): return "0" * 64
        execute._Hasher = NoHasher
    if what in ("nohash", "nohash-src"):
        class NoSourceHasher:
            def __init__(self, paths, ckpt=None, plan=None): pass
            def join(self): return {}
        pipeline.SourceHasher = NoSourceHasher
    if what == "noprefault":
        safetensors._madvise = None
    pipeline.split(src, out, SplitOptions(layout=layout), workers=int(workers))


def run_io(src: str, out: str, mode: str) -> None:
    """Bare copies of the bundle to OUT/copy (no ckptkit), to test write strategies on their own:
    write16 / write64 = write(2) from the mapped file in 16 / 64 MB pieces, write16-populate = the
    same after MADV_POPULATE_READ of each piece, copy-file-range = os.copy_file_range in 16 MB pieces."""
    import ctypes
    import mmap

    os.makedirs(out, exist_ok=True)
    fd = os.open(src, os.O_RDONLY)
    dst = os.open(os.path.join(out, "copy"), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    size = os.fstat(fd).st_size
    chunk = (64 if mode == "write64" else 16) << 20
    if mode == "copy-file-range":
        offset = 0
        while offset < size:
            offset += os.copy_file_range(fd, dst, min(chunk, size - offset), offset)
    else:
        mapping = mmap.mmap(fd, 0, access=mmap.ACCESS_COPY)
        view = memoryview(mapping)
        madvise = ctypes.CDLL(None, use_errno=True).madvise
        madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
        base = ctypes.addressof(ctypes.c_char.from_buffer(mapping))
        for start in range(0, size, chunk):
            n = min(chunk, size - start)
            if mode == "write16-populate":
                madvise(base + start, n, 22)
            os.write(dst, view[start:start + n])
        del view
    os.fsync(dst)
    os.close(dst)


# --- measuring -----------------------------------------------------------------------------------

CKPTKIT = str(Path(sys.executable).with_name("ckptkit"))
TIME = shutil.which("time", path="/usr/bin")


def command_for(route: str, model: str, src: Path, out: Path, config: Path, with_t5: bool) -> list[str]:
    me = [sys.executable, str(Path(__file__).resolve()), "--run"]
    if route == "cp":
        return ["sh", "-c", 'mkdir -p "$1" && cp "$0" "$1/bundle.safetensors" && sync "$1/bundle.safetensors"',
                str(src), str(out)]
    if m := re.fullmatch(r"(comfy|diffusers)-w(\d+)(-cached)?", route):
        return [CKPTKIT, "split", str(src), "-o", str(out), "--layout", m[1], "--workers", m[2]]
    if route.startswith("io-"):
        return [*me, "io", str(src), str(out), route[3:]]
    if route == "naive":
        return [*me, "naive", model, str(src), str(out), "1" if with_t5 else "0"]
    if route in ("diffusers-own", "diffusers-default"):
        return [*me, route, model, str(src), str(out), str(config)]
    if m := re.fullmatch(r"(comfy|diffusers)-w(\d+)-([a-z-]+)", route):
        return [*me, "patched", model, str(src), str(out), m[1], m[2], m[3]]
    raise ValueError(route)


def prepare_cache(src: Path, mode: str) -> None:
    os.sync()
    if mode == "warm":
        with open(src, "rb", buffering=0) as fh:
            buf = bytearray(64 << 20)
            while fh.readinto(buf):
                pass
    else:
        fd = os.open(src, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def mem_available() -> int:
    return int(re.search(r"MemAvailable:\s+(\d+)", Path("/proc/meminfo").read_text()).group(1)) * 1024


DISK_FLOOR = 2 * 10**9  # a route (or the build) is stopped when the disk's free space falls under this


class Watchdog:
    """Polls the route's process tree; kills it when its anonymous RSS passes `limit` bytes or the
    machine's MemAvailable falls under `floor` bytes. Also records the tree's peak anonymous RSS."""

    def __init__(self, proc: subprocess.Popen, limit: int, disk: Path, floor: int = int(1.5 * GB),
                 disk_floor: int = DISK_FLOOR):
        import psutil

        self.proc, self.limit, self.floor, self.psutil = proc, limit, floor, psutil
        self.disk, self.disk_floor = disk, disk_floor
        self.killed: str | None = None
        self.peak_anon = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _anon(self) -> int:
        try:
            procs = [self.psutil.Process(self.proc.pid)]
            procs += procs[0].children(recursive=True)
        except self.psutil.Error:
            return 0
        total = 0
        for p in procs:
            try:
                m = re.search(r"RssAnon:\s+(\d+)", Path(f"/proc/{p.pid}/status").read_text())
                total += int(m.group(1)) * 1024 if m else 0
            except OSError:
                pass
        return total

    def _run(self):
        while not self._stop.wait(0.2):
            anon = self._anon()
            self.peak_anon = max(self.peak_anon, anon)
            avail = mem_available()
            free = shutil.disk_usage(self.disk).free
            if free < self.disk_floor:
                self.killed = f"killed by the watchdog: disk free {free / GB:.1f} GB < {self.disk_floor / GB:.0f} GB"
            elif anon > self.limit or avail < self.floor:
                self.killed = (f"killed by the watchdog: anonymous RSS {anon / GB:.1f} GB"
                               + (f" > limit {self.limit / GB:.0f} GB" if anon > self.limit else
                                  f", MemAvailable {avail / GB:.1f} GB < {self.floor / GB:.1f} GB"))
            if self.killed:
                try:
                    for p in self.psutil.Process(self.proc.pid).children(recursive=True):
                        p.kill()
                    self.proc.kill()
                except self.psutil.Error:
                    pass
                return

    def stop(self):
        self._stop.set()
        self._thread.join()


def parse_time(stderr: str) -> dict:
    def grab(pattern, cast=float):
        m = re.search(pattern, stderr)
        return cast(m.group(1)) if m else None

    kbytes = grab(r"Maximum resident set size \(kbytes\): (\d+)", int)
    return {"rss_mb": kbytes * 1024 / MB if kbytes else None,
            "cpu_s": (grab(r"User time \(seconds\): ([\d.]+)") or 0) + (grab(r"System time \(seconds\): ([\d.]+)") or 0),
            "major_faults": grab(r"Major \(requiring I/O\) page faults: (\d+)", int)}


def tree_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def measure_once(route: str, model: str, src: Path, out: Path, config: Path, with_t5: bool,
                 cache: str, anon_limit: int) -> dict:
    shutil.rmtree(out, ignore_errors=True)
    env = hash_cache_env(route, src, out.parent)
    prepare_cache(src, cache)
    argv = [TIME, "-v", *command_for(route, model, src, out, config, with_t5)]
    start = time.perf_counter()
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT, env=env)
    dog = Watchdog(proc, anon_limit, out.parent)
    stdout, stderr = proc.communicate()
    wall = time.perf_counter() - start
    dog.stop()
    result = {"wall_s": wall, "peak_anon_mb": dog.peak_anon / MB, **parse_time(stderr)}
    if dog.killed:
        result["failed"] = f"{dog.killed} after {wall:.0f} s"
    elif proc.returncode != 0:
        tail = (stderr.strip().splitlines() or ["?"])
        tail = [t for t in tail if not t.startswith("\t")][-1:] or tail[-1:]
        result["failed"] = f"exit {proc.returncode}: {tail[0][:200]}"
        print(stdout[-2000:], stderr[-4000:], sep="\n", file=sys.stderr)
    result["written_bytes"] = tree_bytes(out) if out.exists() else 0
    os.sync()
    shutil.rmtree(out, ignore_errors=True)
    return result


def hash_cache_env(route: str, src: Path, workdir: Path) -> dict:
    """ckptkit's sha256 cache (formats/hashing.py) for one run: empty, so every split pays for
    hashing its source as a first split of a download does; `-cached` routes get a cache that
    already holds the source's hash (filled untimed), as a second split of the same file has."""
    folder = workdir / "hash-cache"
    shutil.rmtree(folder, ignore_errors=True)
    env = {**os.environ, "CKPTKIT_CACHE_DIR": str(folder)}
    if route.endswith("-cached"):
        sys.path.insert(0, str(ROOT))
        from ckptkit.formats import hashing

        old = os.environ.get("CKPTKIT_CACHE_DIR")
        os.environ["CKPTKIT_CACHE_DIR"] = str(folder)
        try:
            hashing.source_sha256(src)
            assert hashing.cached_sha256(src), "the bundle's hash did not go into the cache"
        finally:
            if old is None:
                os.environ.pop("CKPTKIT_CACHE_DIR")
            else:
                os.environ["CKPTKIT_CACHE_DIR"] = old
    return env


def aggregate(runs: list[dict]) -> dict:
    ok = [r for r in runs if "failed" not in r]
    if not ok:
        return runs[-1]
    return {"wall_s": statistics.median(r["wall_s"] for r in ok), "walls": [r["wall_s"] for r in ok],
            "rss_mb": max(r["rss_mb"] for r in ok), "peak_anon_mb": max(r["peak_anon_mb"] for r in ok),
            "cpu_s": statistics.median(r["cpu_s"] for r in ok), "written_bytes": ok[-1]["written_bytes"],
            "major_faults": ok[-1]["major_faults"]}


def write_config(src: Path, config: Path) -> None:
    """The diffusers config folder for from_single_file: ckptkit's `--layout diffusers` sidecars
    (model_index.json, every component's config.json, the scheduler config), without weights and
    without tokenizers (none are derivable from weights; from_single_file gets tokenizer=None)."""
    sys.path.insert(0, str(ROOT))
    from ckptkit import pipeline
    from ckptkit.convert.split import SplitOptions

    plan = pipeline.split(src, config / "unused", SplitOptions(layout="diffusers"), dry_run=True).plan
    shutil.rmtree(config, ignore_errors=True)
    for rel, text in plan.sidecars.items():
        (config / rel).parent.mkdir(parents=True, exist_ok=True)
        (config / rel).write_text(text)


# --- profiling -----------------------------------------------------------------------------------

def profile(src: Path, out: Path, workdir: Path, cache: str, label: str) -> str:
    """py-spy (all threads, idle included, 100 Hz) over `ckptkit split --layout comfy --workers 2`:
    the share of samples per thread and per leaf function."""
    pyspy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    if not os.path.exists(pyspy):
        return "py-spy not installed (pip install py-spy)"
    raw = workdir / f"profile_{label}.txt"
    shutil.rmtree(out, ignore_errors=True)
    prepare_cache(src, cache)
    cmd = [pyspy, "record", "-r", "100", "--threads", "--idle", "--format", "raw", "-o", str(raw), "--",
           CKPTKIT, "split", str(src), "-o", str(out), "--layout", "comfy", "--workers", "2"]
    subprocess.run(cmd, check=True, capture_output=True)
    os.sync()
    shutil.rmtree(out, ignore_errors=True)
    return summarize_profile(raw)


def summarize_profile(raw: Path, top: int = 4) -> str:
    """Samples per thread role, with each role's top leaf frames ("waiting" = blocked on a queue)."""
    import collections

    roles: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    phases: collections.Counter = collections.Counter()
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack:
            continue
        count = int(count)
        if "SourceHasher._run" in stack:
            role = "source sha256 thread (manifest.py SourceHasher)"
        elif "_Hasher._run" in stack:
            role = "output sha256 thread (execute.py _Hasher)"
        elif "_worker (concurrent" in stack:
            role = "pool threads (--workers)"
        else:
            role = "main thread"
            phase = ("imports" if "_find_and_load" in stack else "writing" if "_write_safetensors" in stack
                     else "planning" if "plan_split" in stack or "detect" in stack else "other")
            phases[phase] += count
        leaf = re.sub(r" \((/[^)]*/)?(site-packages/|lib/python3\.\d+/)?", " (", stack.split(";")[-1])
        if re.search(r"Condition\.wait|Queue\.get|_worker \(concurrent/futures/thread\.py:\d+\)$", leaf):
            leaf = "waiting (" + leaf.split(" (")[0] + ")"
        roles[role][leaf] += count
    lines = ["py-spy, 100 Hz, idle samples included (1 sample = 10 ms of one thread):"]
    total_main = sum(phases.values()) or 1
    lines.append("  main thread by phase: " + ", ".join(f"{k} {100 * v / total_main:.0f} %" for k, v in phases.most_common()))
    for role, counter in roles.items():
        n = sum(counter.values())
        tops = "; ".join(f"{k} {100 * v / n:.0f} %" for k, v in counter.most_common(top))
        lines.append(f"  {role}: {n / 100:.1f} s sampled: {tops}")
    return "\n".join(lines)


# --- reporting -----------------------------------------------------------------------------------

def machine(workdir: Path) -> str:
    mem_kb = int(re.search(r"MemTotal:\s+(\d+)", Path("/proc/meminfo").read_text()).group(1))
    import diffusers
    import safetensors
    import torch

    df = subprocess.run(["df", "-T", str(workdir)], capture_output=True, text=True).stdout.splitlines()
    fs = df[-1].split()[1] if len(df) > 1 else "unknown"
    return (f"{os.cpu_count()} CPUs (nproc), {mem_kb / 2**20:.1f} GiB RAM, {platform.machine()}, "
            f"Linux {platform.release()}; Python {platform.python_version()}, torch {torch.__version__}, "
            f"safetensors {safetensors.__version__}, diffusers {diffusers.__version__}; workdir on {fs}")


def table(rows) -> str:
    lines = ["| bundle | route | wall (s) | throughput (MB/s) | vs cp | peak RSS (MB) | CPU (s) | written (GB) |",
             "|---|---|---:|---:|---:|---:|---:|---:|"]
    cp = {m: r for m, route, _, r in rows if route == "cp" and "failed" not in r}
    for model, route, size, r in rows:
        name = ROUTE_NAMES.get(route, route)
        if "failed" in r:
            lines.append(f"| {model} | {name} | - | - | - | - | - | {r['failed']} |")
            continue
        tput = size / MB / r["wall_s"]
        vs = f"{cp[model]['wall_s'] / r['wall_s']:.2f}x" if model in cp else "-"
        walls = "/".join(f"{w:.1f}" for w in r.get("walls", [r["wall_s"]]))
        lines.append(f"| {model} | {name} | {walls} | {tput:.0f} | {vs} | {r['rss_mb']:.0f} | {r['cpu_s']:.0f} | "
                     f"{r['written_bytes'] / GB:.2f} |")
    return "\n".join(lines)


ROUTE_NAMES = {
    "cp": "cp + sync",
    "comfy-w1": "ckptkit split --layout comfy --workers 1",
    "comfy-w2": "ckptkit split --layout comfy --workers 2",
    "comfy-w1-cached": "ckptkit split --layout comfy --workers 1, source sha256 cached",
    "comfy-w2-cached": "ckptkit split --layout comfy --workers 2, source sha256 cached",
    "diffusers-w1-cached": "ckptkit split --layout diffusers --workers 1, source sha256 cached",
    "diffusers-w2-cached": "ckptkit split --layout diffusers --workers 2, source sha256 cached",
    "naive": "naive load_file + save_file",
    "diffusers-w1": "ckptkit split --layout diffusers --workers 1",
    "diffusers-w2": "ckptkit split --layout diffusers --workers 2",
    "diffusers-own": "diffusers from_single_file + save_pretrained (dtype kept)",
    "diffusers-default": "diffusers from_single_file + save_pretrained, no torch_dtype (float32)",
    "comfy-w2-nohash-out": "comfy -w2, output sha256 off (diagnostic)",
    "comfy-w2-nohash-src": "comfy -w2, source sha256 off (diagnostic)",
    "comfy-w2-nohash": "comfy -w2, both sha256 off (diagnostic)",
    "io-write16": "bare mmap -> write(2), 16 MB pieces (diagnostic)",
    "io-write64": "bare mmap -> write(2), 64 MB pieces (diagnostic)",
    "io-write16-populate": "bare mmap -> MADV_POPULATE_READ + write(2), 16 MB (diagnostic)",
    "io-copy-file-range": "bare os.copy_file_range, 16 MB pieces (diagnostic)",
    "comfy-w1-noprefault": "comfy -w1 without MADV_POPULATE_READ (before the fix)",
    "comfy-w2-noprefault": "comfy -w2 without MADV_POPULATE_READ (before the fix)",
}


def verdicts(rows) -> list[str]:
    """The targets, checked against this run's numbers."""
    r = {(m, route): res for m, route, _, res in rows if "failed" not in res}
    size = {m: sz for m, _, sz, _ in rows}
    out = []
    for model in dict.fromkeys(m for m, _, _, _ in rows):
        cp = r.get((model, "cp"))
        comfy = [(route, r[(model, route)]) for route in ("comfy-w1", "comfy-w2") if (model, route) in r]
        if cp and comfy:
            route, best = min(comfy, key=lambda x: x[1]["wall_s"])
            ratio = cp["wall_s"] / best["wall_s"]
            out.append(f"{model}: `--layout comfy` >= 0.8x cp throughput: **{'met' if ratio >= 0.8 else 'not met'}** "
                       f"({ratio:.2f}x with {route}: {size[model] / MB / best['wall_s']:.0f} vs "
                       f"{size[model] / MB / cp['wall_s']:.0f} MB/s)")
        cached = [(route, r[(model, route)]) for route in ("comfy-w1-cached", "comfy-w2-cached") if (model, route) in r]
        if cp and cached:
            route, best = min(cached, key=lambda x: x[1]["wall_s"])
            ratio = cp["wall_s"] / best["wall_s"]
            out.append(f"{model}: the same with the source's sha256 already in the hash cache (a second split of the "
                       f"file, or a quantization of it): **{ratio:.2f}x** cp with {route}")
        ours = [(route, res) for (m, route), res in r.items()
                if m == model and re.fullmatch(r"(comfy|diffusers)-w\d+(-cached)?", route)]
        if ours:
            worst = max(res["rss_mb"] for _, res in ours)
            out.append(f"{model}: ckptkit split peak RSS < 1.5 GB: **{'met' if worst < 1500 else 'not met'}** "
                       f"(at most {worst:.0f} MB over {len(ours)} split routes)")
        own = r.get((model, "diffusers-own"))
        dl = [(route, r[(model, route)]) for route in ("diffusers-w1", "diffusers-w2") if (model, route) in r]
        dl_cached = [(route, r[(model, route)]) for route in ("diffusers-w1-cached", "diffusers-w2-cached")
                     if (model, route) in r]
        if dl_cached and own:
            route, best = min(dl_cached, key=lambda x: x[1]["wall_s"])
            out.append(f"{model}: `--layout diffusers` with the source's sha256 in the hash cache: "
                       f"**{own['wall_s'] / best['wall_s']:.2f}x** faster than diffusers' own route ({route})")
        if dl and own:
            route, best = min(dl, key=lambda x: x[1]["wall_s"])
            speed = own["wall_s"] / best["wall_s"]
            out.append(f"{model}: `--layout diffusers` >= 3x faster than diffusers' own route: "
                       f"**{'met' if speed >= 3 else 'not met'}** ({speed:.2f}x with {route}, "
                       f"peak RSS {best['rss_mb']:.0f} MB vs {own['rss_mb']:.0f} MB = "
                       f"{best['rss_mb'] / own['rss_mb']:.2f} of it)")
            default = r.get((model, "diffusers-default"))
            if default:
                out.append(f"{model}: against diffusers' call without torch_dtype (float32 models): "
                           f"{default['wall_s'] / best['wall_s']:.2f}x faster, peak RSS "
                           f"{best['rss_mb'] / default['rss_mb']:.2f} of it")
        for flag, what in (("nohash", "both sha256 passes"), ("noprefault", "the prefault (the fix)")):
            base, off = r.get((model, "comfy-w2")), r.get((model, f"comfy-w2-{flag}"))
            if base and off:
                out.append(f"{model}: comfy -w2 without {what}: {off['wall_s']:.1f} s, {off['cpu_s']:.0f} CPU s "
                           f"(with: {base['wall_s']:.1f} s, {base['cpu_s']:.0f} CPU s)")
    return out


NOTES = """\
Routes: **cp + sync** = `cp BUNDLE DST && sync DST`, the disk's limit. **ckptkit split** = the CLI,
`ckptkit split BUNDLE -o OUT --layout comfy|diffusers --workers N`: it writes every component file
atomically (fsync + rename), hashes every output (sha256, a thread) and the source (sha256, another
thread, manifest.py SourceHasher) for `ckptkit.json`. Every split route gets an empty hash cache
(`CKPTKIT_CACHE_DIR` set to a fresh folder), as a first split of a download has; the `-cached`
routes get one that already holds the source's hash (filled untimed before the route), as a second
split or a quantization of the same file has; `comfy` converts clip_g from OpenCLIP to
transformers names, `diffusers` converts every component and writes the config files. **naive** =
`safetensors.torch.load_file(BUNDLE)` then `save_file` of each component's tensors with the prefix
stripped, then fsync: no conversion, no hashes, no manifest, no atomic rename. safetensors 0.8
is zero-copy both ways (load_file maps the file; save_file writes from the tensors' memory), so
its peak RSS is the mapped file pages it touches, i.e. the whole bundle. **diffusers (dtype
kept)** = SDXL: `StableDiffusionXLPipeline.from_single_file(BUNDLE, config=CFG,
local_files_only=True, torch_dtype=torch.float16, tokenizer=None, tokenizer_2=None)`; FLUX:
`FluxTransformer2DModel.from_single_file(BUNDLE, config=CFG, subfolder="transformer",
torch_dtype=torch.bfloat16)`, `AutoencoderKL.from_single_file(..., subfolder="vae",
torch_dtype=torch.float32)`, then `FluxPipeline.from_single_file(BUNDLE, config=CFG,
torch_dtype=torch.float16, transformer=..., vae=..., text_encoder_2=None, tokenizer=None,
tokenizer_2=None)` (loads CLIP-L and the scheduler); then `pipe.save_pretrained(OUT)` and an fsync of
every file written. CFG is a local folder holding the config files ckptkit's `--layout diffusers`
writes (model_index.json, each component's config.json, the scheduler config), no weights, no
tokenizers (none can be derived from weights; the pipelines get `tokenizer=None`), so nothing is
fetched. **diffusers, no torch_dtype** (SDXL only) = the same pipeline call without torch_dtype:
diffusers builds the models in float32, so it holds and writes twice the bytes (FLUX would need
about 48 GB of anonymous memory that way: not run). Diagnostic rows monkeypatch ckptkit in the
route's subprocess: hashing replaced by no-ops, or the reader's prefault switched off (the code
before the fix below).

Measurement: each route runs in its own subprocess under `/usr/bin/time -v`: wall time (median of
the rounds, every round in the table), peak RSS (GNU time's maximum resident set size, the largest
over the rounds; mapped file pages count), CPU = user + system seconds of the route (median).
Throughput = bundle file size / wall; vs cp = cp's wall / the route's wall. Every route fsyncs what
it writes; a global sync and the removal of the output run (untimed) between routes. Warm: the
bundle is read once before every route (it stays in the page cache); cold: its pages are dropped
before every route (posix_fadvise DONTNEED), because a bundle the size of RAM cannot stay cached
and a warm state would not be the same for every route. The machine is shared (other engineers'
tests run on its 2 CPUs): wall times move with the load, CPU seconds much less; routes run in
rounds so that a change of load hits all of them.
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", type=Path, default=ROOT / "bench" / "out")
    parser.add_argument("--models", default="sdxl,flux")
    parser.add_argument("--routes", default="cp,comfy-w1,comfy-w2,comfy-w2-cached,naive,diffusers-w1,diffusers-w2,diffusers-w2-cached,diffusers-own")
    parser.add_argument("--repeat", type=int, default=3,
                        help="rounds (every route once per round) for a bundle that fits the page cache (default 3)")
    parser.add_argument("--repeat-large", type=int, default=1,
                        help="rounds for a bundle bigger than 40 %% of RAM (cold cache; default 1)")
    parser.add_argument("--t5", choices=["auto", "yes", "no"], default="auto",
                        help="put T5-XXL in the FLUX bundle (auto: if the disk budget allows)")
    parser.add_argument("--disk-budget-gb", type=float, default=55.0,
                        help="the most this benchmark may put on disk: bundle + one route's output")
    parser.add_argument("--disk-headroom-gb", type=float, default=5.0,
                        help="free space to leave to everyone else on the disk at the peak (default 5); "
                             "a route is stopped if the free space falls under 2 GB")
    parser.add_argument("--cache", choices=["auto", "warm", "cold"], default="auto")
    parser.add_argument("--anon-limit-gb", type=float, default=12.0,
                        help="the watchdog kills a route whose anonymous RSS passes this")
    parser.add_argument("--diagnose", action="store_true",
                        help="also run split with hashing / prefaulting switched off (what each costs)")
    parser.add_argument("--profile", action="store_true", help="py-spy profile of comfy -w2")
    parser.add_argument("--keep", action="store_true", help="keep the bundles")
    parser.add_argument("--no-doc", action="store_true", help="print only; leave docs/BENCHMARKS.md alone")
    parser.add_argument("--run", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.run:
        sys.path.insert(0, str(ROOT))
        kind, *rest = args.run
        {"naive": run_naive, "diffusers-own": run_diffusers_own, "diffusers-default": run_diffusers_default,
         "patched": run_split_patched, "io": run_io}[kind](*rest)
        return

    command = shlex.join(["python", "bench/bench_split.py", *sys.argv[1:]])
    sys.path.insert(0, str(ROOT))
    args.workdir.mkdir(parents=True, exist_ok=True)
    results_path = args.workdir / "bench_split_results.json"
    stored = json.loads(results_path.read_text()) if results_path.exists() else {}
    all_routes = args.routes.split(",")
    mem_total = int(re.search(r"MemTotal:\s+(\d+)", Path("/proc/meminfo").read_text()).group(1)) * 1024
    for model in args.models.split(","):
        notes: list[str] = []
        started = datetime.datetime.now().strftime("%Y-%m-%d %H:%M")
        load_before = os.getloadavg()
        with_t5 = model == "flux" and args.t5 != "no"
        specs = bundle_specs(model, with_t5)
        size = data_bytes(specs)
        free = shutil.disk_usage(args.workdir).free
        kept = args.workdir / f"bench_split_{model}.safetensors"
        if kept.exists():  # a bundle kept from an earlier run (--keep) is reused or replaced: its space counts
            free += kept.stat().st_size
        need = 2 * size + GB // 2  # the bundle + one route's output (about the bundle) + headers, manifests
        headroom = args.disk_headroom_gb * GB
        if model == "flux" and with_t5 and (need > args.disk_budget_gb * GB or need > free - headroom):
            if args.t5 == "yes":
                raise SystemExit(f"flux with T5 needs {need / GB:.0f} GB, budget {args.disk_budget_gb:.0f} GB, "
                                 f"free {free / GB:.0f} GB")
            with_t5 = False
            specs = bundle_specs(model, with_t5)
            notes.append(f"FLUX bundle without T5-XXL: with it the bundle is {size / GB:.1f} GB and bundle + "
                         f"one output {need / GB:.0f} GB, over the {args.disk_budget_gb:.0f} GB disk budget")
            size = data_bytes(specs)
            need = 2 * size + GB // 2
        if need > free - headroom or need > args.disk_budget_gb * GB:
            print(f"{model}: skipped, needs {need / GB:.0f} GB of disk, {free / GB:.0f} GB free "
                  f"(headroom {headroom / GB:.0f} GB, budget {args.disk_budget_gb:.0f} GB)", flush=True)
            continue
        large = size >= 0.4 * mem_total
        cache = args.cache if args.cache != "auto" else ("cold" if large else "warm")
        repeat = args.repeat_large if large else args.repeat
        routes = list(all_routes)
        if model == "sdxl" and "diffusers-own" in routes:  # diffusers' call without torch_dtype (float32)
            routes.insert(routes.index("diffusers-own") + 1, "diffusers-default")
        if args.diagnose:
            routes += (["comfy-w2-nohash-out", "comfy-w2-nohash-src"] if not large else []) + [
                "comfy-w2-nohash", "comfy-w2-noprefault"] + (["comfy-w1-noprefault"] if not large else [])
            if not large:
                routes += ["io-write16", "io-write64", "io-write16-populate", "io-copy-file-range"]
        src = args.workdir / f"bench_split_{model}.safetensors"
        out = args.workdir / f"bench_split_{model}_out"
        config = args.workdir / f"bench_split_{model}_config"
        try:
            if not (args.keep and src.exists()):
                t0 = time.perf_counter()
                build(src, specs, model)
                print(f"built {src.name}: {src.stat().st_size / GB:.2f} GB, {len(specs)} tensors "
                      f"({time.perf_counter() - t0:.0f} s)", flush=True)
            write_config(src, config)
            comps = ", ".join(p[2] for p in bundle_parts(model, with_t5))
            notes.append(f"{LABEL[model]}, {len(specs)} tensors ({comps}), {size / GB:.2f} GB of "
                         f"tensor data, file {src.stat().st_size / GB:.2f} GB; {cache} page cache before every route; "
                         f"{repeat} round(s)")
            runs: dict[str, list[dict]] = {route: [] for route in routes}
            for rep in range(repeat):  # rounds: every route once per round, so drifts in load hit all
                for route in routes:
                    if runs[route] and "failed" in runs[route][-1]:
                        continue
                    r = measure_once(route, model, src, out, config, with_t5, cache, int(args.anon_limit_gb * GB))
                    runs[route].append(r)
                    if "failed" in r:
                        print(f"{model} {route:22s} FAILED: {r['failed']}", flush=True)
                        if "disk free" in r["failed"]:
                            raise SystemExit("the disk is nearly full (others use it too): stopped, bundle removed")
                    else:
                        print(f"{model} {route:22s} wall {r['wall_s']:7.1f} s  {src.stat().st_size / MB / r['wall_s']:6.0f} MB/s  "
                              f"peak RSS {r['rss_mb']:6.0f} MB  anon {r['peak_anon_mb']:6.0f} MB  CPU {r['cpu_s']:6.1f} s  "
                              f"written {r['written_bytes'] / GB:.2f} GB  load {os.getloadavg()[0]:.1f}", flush=True)
            rows = [(model, route, src.stat().st_size, aggregate(runs[route])) for route in routes]
            prof = None
            if args.profile:
                prof = profile(src, out, args.workdir, cache, model)
                print(prof, flush=True)
            print("\n" + table(rows) + "\n", flush=True)
            load_after = os.getloadavg()
            stored[model] = {"command": command, "started": started, "notes": notes, "rows": rows, "profile": prof,
                             "load": f"{'/'.join(f'{x:.1f}' for x in load_before)} at the start, "
                                     f"{'/'.join(f'{x:.1f}' for x in load_after)} at the end"}
            if not args.no_doc:  # a trial run (--no-doc) leaves the stored results alone
                results_path.write_text(json.dumps(stored, indent=1))
        finally:
            shutil.rmtree(out, ignore_errors=True)
            shutil.rmtree(config, ignore_errors=True)
            if not args.keep:
                src.unlink(missing_ok=True)

    if not args.no_doc and stored:
        write_section(SECTION, render(stored, args.workdir))
        print(f"wrote {DOC.relative_to(ROOT)} ({', '.join(stored)})")


def render(stored: dict, workdir: Path) -> str:
    """The section: every model measured so far (bench/out/bench_split_results.json keeps them, so a
    model can be re-run alone), then the notes and the analysis."""
    parts = [f"{SECTION}\n\nMachine: {machine(workdir)}\n"]
    for model in [m for m in MODELS if m in stored]:
        rec = stored[model]
        rows = [tuple(r) for r in rec["rows"]]
        parts.append(f"### {LABEL[model]}\n\nCommand: `{rec['command']}` (from the repository root)\n\n"
                     f"Date: {rec['started']}; load average (1/5/15 min) {rec['load']} (a shared machine)\n\n"
                     + "".join(f"- {n}\n" for n in rec["notes"]) + "\n" + table(rows) + "\n\nTargets:\n\n"
                     + "".join(f"- {v}\n" for v in verdicts(rows))
                     + (f"\nProfile (`--profile`):\n\n```\n{rec['profile']}\n```\n" if rec.get("profile") else ""))
    parts.append(kept_prose())
    return "\n".join(parts)


def kept_prose() -> str:
    """The hand-written part of the section (how it was measured, what limits split and what was
    done about it) as it stands in docs/BENCHMARKS.md: a re-run replaces the tables, not the analysis;
    NOTES when the document has none yet."""
    text = DOC.read_text() if DOC.exists() else ""
    m = re.search(rf"^{re.escape(SECTION)}\n.*?(^### How it was measured\n.*?)(?=^## |\Z)", text, re.S | re.M)
    return m.group(1).rstrip("\n") + "\n" if m else "### How it was measured\n\n" + NOTES


if __name__ == "__main__":
    main()

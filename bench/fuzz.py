"""Fuzz ckptkit's readers at volume: N cases per format, counted and kept as reproducers.

    python bench/fuzz.py                                 # 100,000 cases per format, docs/BENCHMARKS.md updated
    python bench/fuzz.py --cases 3000 --jobs 2 --no-doc  # a quick trial
    python bench/fuzz.py --formats gguf,pickle --seed 7

The inputs and the contract are tests/fuzz/mutators.py's (shared with tests/fuzz/test_fuzz.py): for
any input, open_checkpoint / detect / load / inspect_checkpoint / open_set / read_manifest either
succeed or raise a one-line CkptError; no other exception, no hang over --timeout seconds, no large
memory, no change to the input.

Engine: a plain seeded random.Random over the same structure-aware generators and mutators the
Hypothesis tests use. Case i of format F is built from random.Random(f"{seed}:{F}:{i}"), so any case
can be rebuilt from its number alone; Hypothesis' per-example bookkeeping (choice recording, health
checks, the example database) would cost more than the readers themselves at 100,000 cases per
format, and its shrinking is what the tests are for. Each format runs in its own worker process
(--jobs of them at once), supervised by this one:
  * a Python-level hang is stopped by a --timeout alarm inside the worker; the case is rerun once
    and counts as a hang only if it times out again (else it is counted as "slow": a busy machine);
  * a hang inside C code, or a crash (segfault, OOM kill), is seen by the supervisor (no progress for
    --timeout + 25 s, or the process died): the case is recorded, the worker restarted after it;
  * memory: each case runs under RLIMIT_DATA = the worker's data size + --mem-limit-mb (a reader
    that tries to allocate more gets MemoryError, reported as a finding, as is a CkptError that
    only says memory ran out); the worker's peak RSS (ru_maxrss) is reported, and a case that raises
    it by more than --rss-limit-mb is a finding (the worker is then restarted so later ones show).
Every distinct failure (format, entry point, exception type, innermost frame, innermost ckptkit
frame) gets a reproducer folder under bench/out/fuzz/<format>/: the files, traceback.txt and a
repro.py that rebuilds and reruns the case.
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import json
import multiprocessing as mp
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

OUT = ROOT / "bench" / "out" / "fuzz"
HEADING = "## Fuzzing the readers"
FORMAT_NAMES = ("safetensors", "gguf", "pickle", "json", "detect")
# progress slots shared with a worker
CUR, CASES, OK, REFUSED, ERRORS, HANGS, MAXRSS, SLOW = range(8)


def _rel(path: Path) -> str:
    try:
        return str(Path(path).relative_to(ROOT))
    except ValueError:
        return str(path)


def _slug(key: str, kind: str, step: str) -> str:
    return f"{kind}-{step}-{hashlib.sha1(key.encode()).hexdigest()[:8]}".replace("?", "x")


def worker(fmt: str, seed: str, start: int, end: int, timeout: float, mem_limit: int, rss_limit: int, known: set,
           progress, conn) -> None:
    os.environ.setdefault("CKPTKIT_CACHE_DIR", tempfile.mkdtemp(prefix="ckptkit-fuzz-cache-"))
    import warnings

    warnings.simplefilter("ignore")
    import torch

    torch.set_num_threads(1)
    from tests.fuzz.mutators import case_for, name_tables, run_case, save_reproducer, scratch_dir

    name_tables()
    workdir = scratch_dir(fmt)
    seen = set(known)
    base_rss = None
    try:
        for i in range(start, end):
            progress[CUR] = i
            case = case_for(fmt, seed, i)
            out = run_case(case, workdir, timeout, mem_limit)
            progress[CASES] += 1
            progress[{"ok": OK, "refused": REFUSED, "error": ERRORS, "hang": HANGS}[out.status]] += 1
            progress[SLOW] += out.slow
            if out.failed:
                key = out.key(fmt)
                if key not in seen:
                    seen.add(key)
                    folder = save_reproducer(case, out, OUT / fmt / _slug(key, out.kind, out.step))
                    conn.send(("finding", {"key": key, "format": fmt, "case": i, "kind": out.kind, "step": out.step,
                                           "message": out.message[:500], "where": out.where, "origin": out.origin,
                                           "repro": _rel(folder), "note": case.note}))
                else:
                    conn.send(("hit", key))
            rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
            progress[MAXRSS] = max(progress[MAXRSS], rss)
            if base_rss is None:
                base_rss = rss  # after the first case: interpreter, torch and ckptkit loaded
            elif (rss - base_rss) * 1024 > rss_limit:
                from tests.fuzz.mutators import Outcome

                out = Outcome("error", "?", "BigRSS", f"peak RSS rose from {base_rss // 1024} MB to {rss // 1024} MB")
                key = f"{fmt}|BigRSS|case {i}"
                folder = save_reproducer(case, out, OUT / fmt / _slug(key, "BigRSS", "x"))
                conn.send(("finding", {"key": key, "format": fmt, "case": i, "kind": "BigRSS", "step": "?",
                                       "message": out.message, "where": "", "origin": "", "repro": _rel(folder),
                                       "note": case.note, "rss": True}))
                conn.send(("restart", i + 1))
                return
        conn.send(("done", end))
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


class Supervisor:
    def __init__(self, args):
        self.args = args
        self.lock = threading.Lock()
        self.results: dict[str, dict] = {}

    def run_format(self, fmt: str) -> dict:
        args = self.args
        ctx = mp.get_context("spawn")
        totals = {"cases": 0, "ok": 0, "refused": 0, "errors": 0, "hangs": 0, "slow": 0, "peak_rss_mb": 0.0, "restarts": 0}
        findings: dict[str, dict] = {}
        i = 0
        t0 = time.time()
        while i < args.cases:
            progress = ctx.Array("q", 8, lock=False)
            progress[CUR] = i
            recv, send = ctx.Pipe(duplex=False)
            proc = ctx.Process(target=worker, args=(fmt, args.seed, i, args.cases, args.timeout, args.mem_limit_mb << 20,
                                                    args.rss_limit_mb << 20, set(findings), progress, send), daemon=True)
            proc.start()
            send.close()
            last, last_change, next_i, killed = -1, time.time(), None, False
            while True:
                try:
                    while recv.poll(0.5):
                        msg = recv.recv()
                        if msg[0] == "finding":
                            findings.setdefault(msg[1]["key"], dict(msg[1], count=0))["count"] += 1
                            f = msg[1]
                            self._log(f"[{fmt}] case {f['case']}: {f['kind']} in {f['step']} at {f['where']}")
                        elif msg[0] == "hit":
                            findings[msg[1]]["count"] += 1
                        elif msg[0] in ("done", "restart"):
                            next_i = msg[1]
                except (EOFError, OSError):
                    pass
                if not proc.is_alive():
                    break
                cur = progress[CUR]
                if cur != last:
                    last, last_change = cur, time.time()
                elif time.time() - last_change > args.timeout + 25:
                    proc.kill()
                    killed = True
                    proc.join()
                    break
            proc.join()
            for name, slot in (("cases", CASES), ("ok", OK), ("refused", REFUSED), ("errors", ERRORS), ("hangs", HANGS),
                               ("slow", SLOW)):
                totals[name] += progress[slot]
            totals["peak_rss_mb"] = max(totals["peak_rss_mb"], progress[MAXRSS] / 1024)
            if next_i is not None:
                if next_i < args.cases:
                    totals["restarts"] += 1
                i = next_i
                continue
            # the worker died inside a case (crash, OOM kill) or hung in C code: record it, go on after it
            at = progress[CUR]
            kind = "HardHang" if killed else f"Crash(exit {proc.exitcode})"
            totals["cases"] += 1
            totals["hangs" if killed else "errors"] += 1
            totals["restarts"] += 1
            key = f"{fmt}|{kind}|case {at}"
            repro = ""
            try:
                from tests.fuzz.mutators import Outcome, case_for, save_reproducer

                case = case_for(fmt, args.seed, at)
                out = Outcome("hang" if killed else "error", "?", kind, f"worker {kind} on case {at}")
                repro = _rel(save_reproducer(case, out, OUT / fmt / _slug(key, kind.split("(")[0], "x")))
            except Exception as exc:  # noqa: BLE001 - the record matters more than the copy
                repro = f"(could not rebuild: {exc})"
            findings[key] = {"key": key, "format": fmt, "case": at, "kind": kind, "step": "?", "message": kind, "where": "",
                             "origin": "", "repro": repro, "note": "", "count": 1}
            self._log(f"[{fmt}] case {at}: {kind}; restarting after it")
            i = at + 1
        wall = time.time() - t0
        totals.update(format=fmt, wall_s=round(wall, 1), cases_per_s=round(totals["cases"] / wall, 1) if wall else 0.0,
                      findings=sorted(findings.values(), key=lambda f: (-f["count"], f["key"])))
        self._log(f"[{fmt}] {totals['cases']} cases in {wall:.0f} s ({totals['cases_per_s']}/s): {totals['ok']} ok, "
                  f"{totals['refused']} refused, {totals['errors']} other exceptions, {totals['hangs']} hangs "
                  f"({totals['slow']} more timed out once, not on a rerun), "
                  f"peak RSS {totals['peak_rss_mb']:.0f} MB, {len(findings)} distinct failures")
        with self.lock:
            self.results[fmt] = totals
        return totals

    def _log(self, text: str) -> None:
        with self.lock:
            print(text, flush=True)


def table(results: list[dict]) -> str:
    rows = ["| format | cases | ok | clean refusals (CkptError) | other exceptions | hangs > 5 s | distinct failures | "
            "peak RSS (MB) | wall (s) | cases/s |", "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in results:
        rows.append(f"| {r['format']} | {r['cases']:,} | {r['ok']:,} | {r['refused']:,} | {r['errors']:,} | {r['hangs']:,} | "
                    f"{len(r['findings'])} | {r['peak_rss_mb']:.0f} | {r['wall_s']:.0f} | {r['cases_per_s']:.0f} |")
    return "\n".join(rows)


def findings_text(results: list[dict]) -> str:
    lines = []
    for r in results:
        for f in r["findings"]:
            lines.append(f"- {f['format']}: **{f['kind']}** in `{f['step']}` x{f['count']} at `{f['where'] or '-'}`"
                         f"{' (ckptkit: `' + f['origin'] + '`)' if f['origin'] and f['origin'] != f['where'] else ''}: "
                         f"{f['message'][:160]!r}; reproducer `{f['repro']}`")
    return "\n".join(lines) if lines else "None: every case was read or refused with one CkptError line."


def _git(*cmd: str) -> str:
    try:
        return subprocess.run(["git", *cmd], cwd=ROOT, capture_output=True, text=True, timeout=30).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


def machine() -> str:
    import torch
    from importlib.metadata import version

    mem = ""
    try:
        kb = int(next(line for line in open("/proc/meminfo") if line.startswith("MemTotal")).split()[1])
        mem = f", {kb / 2**20:.1f} GiB RAM"
    except (OSError, StopIteration, ValueError):
        pass
    try:
        gv = version("gguf")
    except Exception:  # noqa: BLE001
        gv = "?"
    return (f"{os.cpu_count()} CPUs{mem}, {platform.machine()}, Linux {platform.release()}; Python {platform.python_version()}, "
            f"torch {torch.__version__}, gguf {gv}")


def write_doc(args, results: list[dict], command: str, total_wall: float) -> None:
    sys.path.insert(0, str(ROOT / "bench"))
    from benchdoc import write_section  # bench/ holds the one writer of BENCHMARKS.md sections

    commit = _git("rev-parse", "--short", "HEAD") or "unknown"
    dirty = " (with uncommitted changes)" if _git("status", "--porcelain", "--untracked-files=no") else ""
    about = textwrap.fill(
        "Inputs: tests/fuzz/mutators.py's structure-aware generators and mutators (safetensors header fields "
        "and length; GGUF counts, KV types, string lengths, array counts, tensor dims/types/offsets; torch zip "
        "members and pickle opcodes, legacy pickle streams; index / ckptkit.json / config.json / model_index.json "
        "fields and folder entries; real tensor-name layouts from ../shared/manifests with odd shapes and dtypes) "
        f"plus byte-level mutations, driven by a seeded random.Random (case i of format F from `{args.seed}:F:i`), "
        f"one worker process per format, {args.jobs} at a time. Limits per case: {args.timeout:g} s (alarm), data "
        f"segment +{args.mem_limit_mb} MB (RLIMIT_DATA); a case raising the worker's peak RSS by more than "
        f"{args.rss_limit_mb} MB is a finding; a case that times out is rerun once and is a hang only if it times "
        f"out again (timed out once only: {sum(r['slow'] for r in results)}). Wall time for the whole run: "
        f"{total_wall:.0f} s.", width=100)
    section = f"""{HEADING}

Command: `{command}` (from the repository root)

Date: {datetime.date.today().isoformat()}, commit {commit}{dirty}

Machine: {machine()}

{about}

{table(results)}

Failures (each distinct kind once, with its count and a reproducer under bench/out/fuzz/, not kept in git):

{findings_text(results)}
"""
    write_section(HEADING, section)
    print(f"wrote {HEADING!r} in docs/BENCHMARKS.md")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--cases", type=int, default=100_000, help="cases per format (default 100000)")
    ap.add_argument("--formats", default=",".join(FORMAT_NAMES), help=f"comma-separated, of {', '.join(FORMAT_NAMES)}")
    ap.add_argument("--seed", default="0", help="seed (any string); case i of format F is built from '<seed>:F:i'")
    ap.add_argument("--jobs", type=int, default=2, help="formats fuzzed in parallel worker processes")
    ap.add_argument("--timeout", type=float, default=5.0, help="seconds per case before it counts as a hang")
    ap.add_argument("--mem-limit-mb", type=int, default=1024, help="RLIMIT_DATA headroom per case")
    ap.add_argument("--rss-limit-mb", type=int, default=256, help="a case raising peak RSS by more is a finding")
    ap.add_argument("--no-doc", action="store_true", help="do not write docs/BENCHMARKS.md")
    args = ap.parse_args(argv)
    formats = [f.strip() for f in args.formats.split(",") if f.strip()]
    unknown = [f for f in formats if f not in FORMAT_NAMES]
    if unknown:
        ap.error(f"unknown format(s) {unknown}; choose from {FORMAT_NAMES}")
    command = "python bench/fuzz.py " + " ".join(sys.argv[1:] if argv is None else argv)
    for fmt in formats:
        shutil.rmtree(OUT / fmt, ignore_errors=True)
    OUT.mkdir(parents=True, exist_ok=True)
    sup = Supervisor(args)
    t0 = time.time()
    # longest first, so --jobs 2 ends the formats at about the same time
    order = sorted(formats, key=lambda f: -{"json": 5, "detect": 4, "pickle": 3, "safetensors": 2, "gguf": 1}[f])
    with ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
        list(pool.map(sup.run_format, order))
    total_wall = time.time() - t0
    results = [sup.results[f] for f in formats]
    print()
    print(table(results))
    print()
    print(findings_text(results))
    summary = {"command": command, "wall_s": round(total_wall, 1), "results": results}
    (OUT / "summary.json").write_text(json.dumps(summary, indent=1))
    print(f"\nwhole run: {total_wall:.0f} s; summary in {_rel(OUT / 'summary.json')}")
    if not args.no_doc:
        write_doc(args, results, command, total_wall)
    return 1 if any(r["errors"] or r["hangs"] for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())

"""docs/BENCHMARKS.md, one `## ` section per benchmark: a benchmark that writes its results
replaces its own section (from its heading to the next `## `) and leaves the others alone."""

from __future__ import annotations

import re
from pathlib import Path

DOC = Path(__file__).resolve().parents[1] / "docs" / "BENCHMARKS.md"


def write_section(heading: str, section: str) -> None:
    """Put `section` (which starts with `heading`) in place of the document's section `heading`, or
    at the end when there is none yet."""
    text = DOC.read_text() if DOC.exists() else "# Benchmarks\n"
    pattern = re.compile(rf"^{re.escape(heading)}\n.*?(?=^## |\Z)", re.S | re.M)
    if pattern.search(text):
        text = pattern.sub(lambda _: section, text)
    else:
        text = text.rstrip("\n") + "\n\n" + section
    DOC.parent.mkdir(parents=True, exist_ok=True)
    DOC.write_text(text)


# A wrapper process that only runs a command and records its exit code, wall and CPU time and peak RSS
# (`getrusage(RUSAGE_CHILDREN).ru_maxrss`: the kernel's exact high-water mark of the command, which a
# poll of RSS can miss): python -c WRAPPER RESULT.json CMD...
WRAPPER = """\
import json, resource, subprocess, sys, time
t0 = time.perf_counter()
rc = subprocess.run(sys.argv[2:]).returncode
wall = time.perf_counter() - t0
ru = resource.getrusage(resource.RUSAGE_CHILDREN)
with open(sys.argv[1], "w") as fh:
    json.dump({"rc": rc, "wall_s": wall, "peak_rss": ru.ru_maxrss * 1024, "cpu_s": ru.ru_utime + ru.ru_stime}, fh)
"""


def publish(heading: str, section: str, write: bool) -> None:
    """Print a benchmark's section; with `write` (--write-doc) put it in docs/BENCHMARKS.md too."""
    print("\n" + section)
    if write:
        write_section(heading, section)
        print(f"wrote {DOC.relative_to(DOC.parents[1])}")

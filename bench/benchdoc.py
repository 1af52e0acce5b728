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

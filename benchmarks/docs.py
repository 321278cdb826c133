"""Where the benchmarks write their figures: a marked block of docs/performance.md."""

from __future__ import annotations

import re
from pathlib import Path

PERFORMANCE = Path(__file__).resolve().parents[1] / "docs" / "performance.md"


def write_block(name: str, block: str, path: Path = PERFORMANCE) -> None:
    """Replace the ``<!-- bench:NAME -->`` … ``<!-- /bench:NAME -->`` block of ``path`` with
    ``block`` (which carries the markers), or append it."""
    text = path.read_text()
    marked = re.compile(rf"<!-- bench:{name} -->.*<!-- /bench:{name} -->", re.S)
    if marked.search(text):
        text = marked.sub(lambda _: block, text)
    else:
        text = text.rstrip() + "\n\n" + block + "\n"
    path.write_text(text)
    print(f"written to {path.relative_to(path.parents[1])}")

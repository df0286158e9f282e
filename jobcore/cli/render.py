"""Job data formatted for a terminal (escaped text, tables, JSON, progress bars); no database, no parsing."""

from __future__ import annotations

import json
import sys
from typing import Any, Iterable, Optional, Sequence

from ..models import JobPriority, JobResult

BAR_WIDTH = 30


def clean(text: Any, *, multiline: bool = False) -> str:
    """Job data made safe for a terminal: control characters (escape sequences, and newlines
    unless `multiline`) are shown escaped instead of being interpreted."""
    keep = "\n\t" if multiline else ""
    return "".join(ch if ch in keep or ch.isprintable() else ch.encode("unicode_escape").decode("ascii")
                   for ch in str(text))


def _when(result_time: Any) -> str:
    return "-" if result_time is None else result_time.strftime("%Y-%m-%d %H:%M:%S")


def _percent(progress: float) -> str:
    return f"{round(progress * 100)}%"


def _priority(value: int) -> str:
    names = {int(p): p.name.lower() for p in JobPriority}
    return f"{value} ({names[value]})" if value in names else str(value)


def _print_json(data: Any) -> None:
    """`data` as JSON on stdout: its text as is where stdout's encoding can show it, else
    with every non-ASCII character as a JSON escape (`\\u6708`), so that the output stays
    valid JSON meaning the same (the stream's own escapes, `\\xe9`, are not JSON)."""
    text = json.dumps(data, indent=2, ensure_ascii=False, default=str)
    try:
        text.encode(getattr(sys.stdout, "encoding", None) or "utf-8")
    except (UnicodeEncodeError, LookupError):
        text = json.dumps(data, indent=2, ensure_ascii=True, default=str)
    print(text)


def _print_table(headers: Sequence[str], rows: Iterable[Sequence[str]]) -> None:
    rows = [[clean(cell) for cell in row] for row in rows]
    widths = [max(len(row[i]) for row in [list(headers), *rows]) for i in range(len(headers))]
    for row in [list(headers), *rows]:
        print("  ".join(cell.ljust(width) for cell, width in zip(row[:-1], widths)) + "  " + row[-1])


def _shorten(text: Optional[str], limit: int = 60) -> str:
    text = clean(text or "")
    return text if len(text) <= limit else text[:limit - 1] + "…"


def render_bar(result: JobResult, width: int = BAR_WIDTH) -> str:
    """One line: `[#########.....]  45%  running  message`."""
    filled = int(round(result.progress * width))
    line = f"[{'#' * filled}{'.' * (width - filled)}] {_percent(result.progress):>4}  {result.status.value}"
    if result.progress_message:
        line += f"  {clean(result.progress_message)}"
    return line

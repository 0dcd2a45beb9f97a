"""One table printer: aligned text, Markdown or CSV from a header and rows of cells.

``annoboot compare`` and the benchmarks' tables (benchmarks/_harness.py) print through it, so a
user's own runs and the published tables read the same way.
"""

from __future__ import annotations

import csv
import io
from typing import Sequence, Tuple

FORMATS = ("text", "md", "csv")


def format_views(views: float) -> str:
    """Views seen as the tables print them: 1.28M, or 96 / 5,000 below 100k."""
    return f"{views / 1e6:.2f}M" if views >= 1e5 else f"{int(views):,}"


def format_table(header: Sequence[str], rows: Sequence[Sequence[str]], fmt: str = "text",
                 widths: Sequence[int] = (), group_titles: Sequence[Tuple[str, int]] = ()) -> str:
    """The table as one string (no trailing newline). The first column is a name (left-aligned),
    the others figures (right-aligned). ``widths``: the least width of each column in text (the
    cells' own width otherwise); ``group_titles``: (title, number of columns after the first
    ``len(header) - sum(n)``) printed above the column titles, text only."""
    if fmt not in FORMATS:
        raise ValueError(f"table format '{fmt}' is not one of {', '.join(FORMATS)}")
    cells = [list(map(str, header)), *[list(map(str, row)) for row in rows]]
    columns = len(cells[0])
    if any(len(row) != columns for row in cells):
        raise ValueError(f"every row needs {columns} cells (the header's)")
    if fmt == "csv":
        out = io.StringIO()
        csv.writer(out, lineterminator="\n").writerows(cells)
        return out.getvalue().rstrip("\n")
    if fmt == "md":
        escape = [[cell.replace("|", "\\|") for cell in row] for row in cells]
        lines = ["| " + " | ".join(escape[0]) + " |", "|" + "|".join(["---"] + ["---:"] * (columns - 1)) + "|"]
        return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in escape[1:]])
    width = [max([len(row[i]) for row in cells] + [widths[i] if i < len(widths) else 0]) for i in range(columns)]
    # Two spaces between columns unless a least width already spaces them.
    pad = [0 if i < len(widths) else 2 for i in range(columns)]

    def line(row: Sequence[str]) -> str:
        first = f"{row[0]:<{width[0]}}"
        return (first + "".join(" " * pad[i] + f"{row[i]:>{width[i]}}" for i in range(1, columns))).rstrip()

    lines = []
    if group_titles:
        lead = columns - sum(n for _, n in group_titles)
        start = sum(width[i] + (pad[i] if i else 0) for i in range(lead))
        text, col = " " * start, lead
        for title, n in group_titles:
            span = sum(width[i] + pad[i] for i in range(col, col + n))
            text += f"{title:>{span}}"
            col += n
        lines.append(text.rstrip())
    lines += [line(row) for row in cells]
    return "\n".join(lines)


__all__ = ["FORMATS", "format_table", "format_views"]

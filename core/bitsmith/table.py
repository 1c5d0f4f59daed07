"""Plain-text tables for reports printed to a terminal."""

from __future__ import annotations

from typing import Any, Sequence


def format_table(headers: Sequence[str], rows: Sequence[Sequence[Any]], *, align: str | None = None) -> str:
    """Render rows as an aligned text table; ``align`` is one ``l``/``r`` per column (numbers right by default)."""
    cells = [[_cell(v) for v in row] for row in rows]
    if align is None:
        align = "".join("r" if rows and isinstance(rows[0][i], (int, float)) else "l" for i in range(len(headers)))
    widths = [max([len(h)] + [len(r[i]) for r in cells]) for i, h in enumerate(headers)]

    def line(values: Sequence[str]) -> str:
        return "  ".join(v.rjust(w) if a == "r" else v.ljust(w) for v, w, a in zip(values, widths, align)).rstrip()

    out = [line(list(headers)), line(["-" * w for w in widths])]
    out += [line(r) for r in cells]
    return "\n".join(out)


def format_number(value: float) -> str:
    """A score for humans: two decimals, or three significant digits when that would print ``0.00``.

    ``nan`` prints as ``-``; infinities as ``inf`` / ``-inf``.
    """
    if value != value:  # NaN
        return "-"
    if value in (float("inf"), float("-inf")):
        return "inf" if value > 0 else "-inf"
    if value and abs(value) < 0.01:  # e.g. an MSE of 1.7e-05 must not print as 0.00
        return f"{value:.3g}"
    return f"{value:.2f}"


def _cell(value: Any) -> str:
    return format_number(value) if isinstance(value, float) else str(value)

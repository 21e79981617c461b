"""The only module of the report package that writes files: figures and the report pages, each atomically."""

from __future__ import annotations

import io
from pathlib import Path

from matplotlib.figure import Figure

from fm2edge.runs import atomic_write_bytes, atomic_write_text


def save_figure(fig: Figure, path: str | Path, dpi: int = 120) -> Path:
    """Render ``fig`` to PNG and write it atomically."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    atomic_write_bytes(path, buf.getvalue())
    return Path(path)


def write_report(folder: str | Path, page: str, markdown: str) -> tuple[Path, Path]:
    """``report.html`` and ``report.md`` in ``folder``."""
    folder = Path(folder)
    atomic_write_text(folder / "report.html", page)
    atomic_write_text(folder / "report.md", markdown)
    return folder / "report.html", folder / "report.md"

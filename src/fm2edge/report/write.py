"""The only module of the report package that writes files."""

from __future__ import annotations

import io
from pathlib import Path

from matplotlib.figure import Figure

from fm2edge.runs import atomic_write_bytes


def save_figure(fig: Figure, path: str | Path, dpi: int = 120) -> Path:
    """Render ``fig`` to PNG and write it atomically."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    atomic_write_bytes(path, buf.getvalue())
    return Path(path)

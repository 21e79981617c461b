"""What the benchmark scripts share: where the real CIFAR-10 copy lives, and the default data it implies.

The scripts run as ``python benchmarks/NAME.py``, so this folder is on ``sys.path`` and ``from common import ...``
works from each of them.
"""

from __future__ import annotations

from pathlib import Path

# ../shared/data/cifar10 beside the project: CIFAR-10 in the Hugging Face schema (train/test parquet)
SHARED_CIFAR10 = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "cifar10"


def default_data() -> str:
    """The shared CIFAR-10 copy where it exists, else scikit-learn's digits (offline everywhere)."""
    return str(SHARED_CIFAR10) if SHARED_CIFAR10.exists() else "digits"

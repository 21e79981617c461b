"""`fm2edge list`: what models and data sources exist."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

DATA_SOURCES = [
    ("digits", "scikit-learn's 8x8 handwritten digits, 1,797 images, 10 classes (ships with scikit-learn, offline)"),
    ("<hub id>", "a Hugging Face dataset, e.g. uoft-cs/cifar10 (needs the hub or its cache)"),
    ("<folder of parquet/arrow>", "files in the hub's schema, e.g. a folder holding train.parquet and test.parquet "
                                  "(splits by file name; a validation.parquet is the validation split)"),
    ("<file.parquet|.arrow>", "one file, used as the train split"),
    ("<image folder>", "root/<class>/<image>, optionally root/{train,val,test}/<class>/<image>"),
]


@dataclass
class ListJob:
    """`fm2edge list`: print the registered models and the accepted data sources.

    Args:
        what: "models", "data" or "all".
    """

    what: Literal["models", "data", "all"] = "all"


def list_job(job: ListJob) -> None:
    from fm2edge.models import entries

    if job.what in ("models", "all"):
        print("models (--model.name):")
        for e in entries():
            label = f"{e.name}<name>" if e.is_prefix else e.name
            print(f"  {label:<28} [{e.kind}] {e.help}")
    if job.what in ("data", "all"):
        print("data sources (--data.source):")
        for name, text in DATA_SOURCES:
            print(f"  {name:<28} {text}")

"""Data sources -> one dataset type (:class:`ImageData`)."""

from fm2edge.data.dataset import (
    ImageData,
    balanced_indices,
    holdout_split,
    load_data,
    load_left_out,
    load_unlabeled,
    load_unlabeled_source,
    validation_split,
)

__all__ = ["ImageData", "balanced_indices", "holdout_split", "load_data", "load_left_out", "load_unlabeled",
           "load_unlabeled_source", "validation_split"]

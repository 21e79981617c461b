"""`fm2edge auto`: a folder of labelled photos and a latency budget in, the most accurate verified model out.

The lifecycle of the package, driven for the user: measure the candidate students on this machine, drop those over
the budget, choose a teacher on validation, distil every remaining candidate with the proven recipe inside the time
budget, export the finalists to fp32 and int8 ONNX, choose the most accurate (model, precision) on validation that
meets the budget, and read the test split once for it and for the teacher.
"""

from fm2edge.automate.config import AutoConfig, AutoJob

__all__ = ["AutoConfig", "AutoJob", "auto_job"]


def __getattr__(name: str):
    # auto_job's module imports torch; its config does not, so `fm2edge auto --help` reads the flags without it
    if name == "auto_job":
        from fm2edge.automate.job import auto_job

        return auto_job
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

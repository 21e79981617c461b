"""User-facing errors: one clear line that names the problem and the fix, never a traceback."""

from __future__ import annotations


class Fm2EdgeError(Exception):
    """An error caused by the user's input or environment; the CLI prints it as one line and exits non-zero."""


class HubUnreachableError(Fm2EdgeError):
    """The Hugging Face Hub (or another download site) cannot be reached for a name that needs it."""

    def __init__(self, what: str, name: str, fix: str) -> None:
        super().__init__(f"cannot download {what} '{name}': the Hugging Face Hub is unreachable (offline or no "
                         f"network); {fix}, or pre-fill the cache under HF_HOME on a machine with network access.")


class UnreadableImageError(Fm2EdgeError):
    """An image file that cannot be decoded (truncated, corrupt, not an image): where many are read, one is skipped."""


def is_offline_error(exc: BaseException) -> bool:
    """True when ``exc`` (or its cause chain) says a download failed because there is no network or hub."""
    names = {
        "OfflineModeIsEnabled", "LocalEntryNotFoundError", "ConnectionError", "ConnectTimeout", "ReadTimeout",
        "MaxRetryError", "NameResolutionError", "URLError", "HfHubHTTPError", "gaierror", "ConnectError",
    }
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if type(exc).__name__ in names:
            return True
        text = str(exc)
        if any(s in text for s in ("offline mode", "HF_HUB_OFFLINE", "couldn't connect", "Name or service not known",
                                   "Temporary failure in name resolution", "Network is unreachable",
                                   "We couldn't connect", "outgoing traffic has been disabled")):
            return True
        exc = exc.__cause__ or exc.__context__
    return False

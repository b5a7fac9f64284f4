"""The error every weight-file reader raises, and the wording shared by the readers that refuse unsafe pickles."""

from __future__ import annotations

__all__ = ["CheckpointError", "SAFETY_MESSAGE"]

# Formatted with `what`: the refused global (e.g. "posix.system").
SAFETY_MESSAGE = (
    "it references code or objects ({what}) that will not be unpickled for safety; no code from the file was run"
)


class CheckpointError(ValueError):
    """A weight file is unreadable: corrupt, truncated, of an unknown format, or unsafe to unpickle."""

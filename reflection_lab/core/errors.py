"""The errors a user can fix: each message is one line that says what failed, why, and what to do.

Why one base class: the CLI prints a `LabError` as that one line and exits non-zero, with no traceback
(`--debug` shows it); anything else is a bug in the lab and keeps its traceback. Every stage raises
these for bad settings, missing inputs and environment faults, so notebooks read the same sentences.
"""

from __future__ import annotations


class LabError(Exception):
    """A failure with a message that names the file, field or URL and says what to do."""


class RunDirError(LabError):
    """The run directory cannot be used: a file where a folder should be, a corrupt manifest."""


class StageFailed(LabError, RuntimeError):
    """A stage ran but produced nothing usable (e.g. the teacher answered too few requests)."""


class ModelError(LabError, RuntimeError):
    """A model cannot be loaded or prepared here (not found offline, gated, no 4-bit support, no download)."""

"""Error types caught once at the CLI edge and printed as one line.

Every message names the file (or case) and the problem, so a user can act on
it without a traceback.
"""


class MedK2NError(Exception):
    """Base class: anything the user can fix by changing their input."""


class DataError(MedK2NError):
    """A case, volume or dataset breaks the data contract (DESIGN.md)."""


class ConfigError(MedK2NError):
    """A config file or preset is unreadable or has unknown keys."""


class CheckpointError(MedK2NError):
    """A checkpoint folder is missing files, has wrong keys or a bad vocabulary."""


class BundleError(MedK2NError):
    """A bundle is incomplete, tampered with, or does not fit the request."""


class ExportError(MedK2NError):
    """Export failed a check (parity, accuracy) or a tool is missing."""


class RunFault(MedK2NError):
    """A fault that no later case can escape (disk full, output not writable): the run stops here.

    `reports` holds what the run finished before it, so a summary can still be written.
    """

    def __init__(self, message: str, reports: list | None = None) -> None:
        super().__init__(message)
        self.reports = reports or []

"""One family of errors, rooted at :class:`HPTError`.

Every error a user can cause derives from :class:`HPTError`, so ``except HPTError`` catches all of
them, and each also derives from the matching built-in (``ValueError``, ``RuntimeError``) so code
written against the built-ins keeps working.
"""

from __future__ import annotations

import difflib


class HPTError(Exception):
    """Base class of every error raised by lightning-hpt."""


class SearchSpaceError(HPTError, ValueError):
    """A domain or search space is invalid (raised at construction, before any trial runs)."""


class ConfigurationError(HPTError, ValueError):
    """An argument of the search is invalid or inconsistent with another one."""


class StorageError(HPTError, RuntimeError):
    """The study database cannot be opened, read or written."""


class OutputError(HPTError, OSError):
    """A file asked for (a report, an export, a best config) cannot be written where it was asked."""


class StudyMismatchError(StorageError):
    """An existing study was opened with a different space, monitor or direction."""


class StudyNotFoundError(StorageError):
    """The storage has no study of this name (never created, or deleted by another program).

    Attributes:
        study: the name asked for.
        known: the studies the storage holds.
    """

    def __init__(self, study: str, where: str, known: list[str]) -> None:
        near = difflib.get_close_matches(study, known, n=3)
        hint = f"; did you mean {near}?" if near else ""
        super().__init__(f"there is no study {study!r} in {where}; the studies there are {known}{hint}")
        self.study, self.where, self.known = study, where, known

    def __reduce__(self) -> tuple[type, tuple[str, str, list[str]]]:  # picklable across processes
        return type(self), (self.study, self.where, self.known)


class DuplicateTrialError(StorageError):
    """The study already has a trial with this configuration (another driver created it first)."""


class DatabaseLockedError(StorageError):
    """The database stayed locked by another process past the retry limit."""


class MetricNotFoundError(HPTError, KeyError):
    """The monitored metric was never logged by the trial."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class SearchFailedError(HPTError, RuntimeError):
    """The search stopped early, or ended, with no COMPLETE trial; the message shows each error once.

    Raised when the first trials fail with the same error over different configurations (the
    search stops early, see :mod:`lightning_hpt.failures`), and at the end of a search that has no
    COMPLETE trial. The CLI exits with status 1.

    Attributes:
        result: the study's :class:`~lightning_hpt.result.SearchResult` when raised at the end of
            ``run()``; ``None`` when the search stopped early.
    """

    def __init__(self, message: str, result: object = None) -> None:
        super().__init__(message)
        self.result = result


class TrialPickleError(ConfigurationError):
    """Trial code cannot be sent to a worker process."""


class SearchPreempted(SystemExit):
    """Raised in the driver when it receives SIGTERM (cluster pre-emption).

    It derives from ``SystemExit`` with code 143 (128 + SIGTERM), so a script that does not
    catch it exits with the status a scheduler expects from a terminated job.
    """

    def __init__(self, message: str = "pre-empted (SIGTERM)") -> None:
        super().__init__(143)
        self.message = message

    def __str__(self) -> str:
        return self.message

"""Errors that end a command-line run with one line saying what to do next."""


class PercolateError(Exception):
    """An expected failure: ``str(err)`` is one line a person can act on."""

    def __init__(self, problem: str, action: str = "") -> None:
        self.problem = problem
        self.action = action
        super().__init__(f"{problem}: {action}" if action else problem)


class MissingPackageError(PercolateError):
    """A package that carries weights or binaries is not installed."""


class BuildError(PercolateError):
    """A model build step failed."""


class RepositoryError(PercolateError):
    """The model repository is incomplete, corrupt or in use."""

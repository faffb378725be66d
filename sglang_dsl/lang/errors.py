"""Errors a program run raises. Each names the program and the node that failed, so a message like
``program 'few_shot_qa', node gen('answer'): ...`` points at the line to fix."""

from __future__ import annotations


class ProgramError(RuntimeError):
    """A node of a program failed (the backend refused or broke off a request, a role was misused...).

    ``program`` is the function's name, ``node`` the failing node's label (``gen('answer')``); ``__cause__``
    holds the backend's original exception when there is one."""

    def __init__(self, message: str, *, program: str | None = None, node: str | None = None):
        super().__init__(message)
        self.message = message
        self.program = program
        self.node = node

    def __str__(self) -> str:
        where = ", ".join(part for part in (
            f"program {self.program!r}" if self.program else "",
            f"node {self.node}" if self.node else "",
        ) if part)
        return f"{where}: {self.message}" if where else self.message

    def located(self, program: str, node: str | None) -> "ProgramError":
        """Fill in where the error happened, unless it already says so; returns itself."""
        self.program = self.program or program
        self.node = self.node or node
        return self


class UnsupportedFeatureError(ProgramError):
    """The backend cannot do what a node asks (``feature``: ``select``, ``image``, ``streaming``...)."""

    def __init__(self, feature: str, backend: str, *, detail: str = "", node: str | None = None):
        message = f"backend {backend} does not support {feature}" + (f": {detail}" if detail else "")
        super().__init__(message, node=node)
        self.feature = feature
        self.backend = backend

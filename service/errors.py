"""Job errors with a stable code the dashboard shows and a flag saying whether a retry can help."""

from __future__ import annotations


class JobError(Exception):
    """A job cannot finish; `code` is stable (for IT and tests), the message has no PHI."""

    def __init__(self, code: str, message: str, *, retryable: bool = False) -> None:
        super().__init__(message)
        self.code = code
        self.retryable = retryable

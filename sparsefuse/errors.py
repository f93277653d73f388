"""The one exception family for user-facing problems (STYLE.md, Errors)."""

from __future__ import annotations


class SparsefuseError(Exception):
    """A user mistake or an environment problem, reported as one line plus a hint.

    The CLI prints ``error: <message> (hint: <hint>)`` and exits 2. Internal bugs are
    never wrapped in this class, so they keep their traceback.
    """

    def __init__(self, message: str, hint: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def one_line(self) -> str:
        text = f"error: {self.message}"
        if self.hint:
            text += f" (hint: {self.hint})"
        return text.replace("\n", " ")

"""What the console's modules share: the refusal every route raises, and the shape of a workflow id."""

from __future__ import annotations

import re

WID_RE = re.compile(r"^[A-Za-z0-9_.:@=-]{1,200}$")


class Denied(Exception):
    """A refused request: its HTTP status and the one line shown (a page, or {"error"} for scripts)."""

    def __init__(self, status: int, message: str, hint: str = ""):
        super().__init__(message)
        self.status, self.message, self.hint = status, message, hint

"""Shared CLI plumbing: clients from settings, error -> exit code, output helpers."""

from __future__ import annotations

import json
import sys
from contextlib import asynccontextmanager
from typing import Any

from pydantic import ValidationError


class CliError(Exception):
    """A user-facing error with an exit code."""

    def __init__(self, message: str, code: int = 2):
        super().__init__(message)
        self.exit_code = code


def exit_code_for(e: BaseException) -> int:
    from activities.switch_store import StoreError
    from core.etcd import EtcdAuthError, EtcdOutcomeUnknown, EtcdUnavailable

    if isinstance(e, CliError):
        return e.exit_code
    if isinstance(e, StoreError):
        return e.exit_code
    if isinstance(e, EtcdAuthError):
        return 3
    if isinstance(e, EtcdOutcomeUnknown):  # the write may have landed: not "nothing changed" (exit 5)
        return 9
    from temporalio.service import RPCError

    if isinstance(e, RPCError):  # Temporal answered nothing usable (a timeout, a dropped connection)
        return 5
    if isinstance(e, EtcdUnavailable):
        return 5
    if isinstance(e, (ValidationError, ValueError)):
        return 2
    code = getattr(e, "exit_code", None)
    return code if isinstance(code, int) else 1


@asynccontextmanager
async def switch_store():
    from activities.switch_store import SwitchStore
    from core.etcd import Etcd
    from core.settings import EtcdSettings

    s = EtcdSettings()
    async with Etcd.from_settings(s) as etcd:
        yield SwitchStore(etcd, s.prefix)


def print_json(obj: Any) -> None:
    json.dump(obj, sys.stdout, indent=2, default=str)
    sys.stdout.write("\n")


def table(rows: list[list[str]], headers: list[str]) -> str:
    widths = [max(len(str(x)) for x in col) for col in zip(headers, *rows)]
    line = lambda r: "  ".join(str(c).ljust(w) for c, w in zip(r, widths)).rstrip()  # noqa: E731
    return "\n".join([line(headers), line(["-" * w for w in widths]), *(line(r) for r in rows)])

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


# Every error kind's exit code (README "exit | meaning"): the one table the CLI maps outcomes with.
def _exit_codes() -> dict:
    from contracts.errors import ErrorKind as K

    return {
        K.INVALID_CHANGE: 2, K.NOT_INITIALISED: 2, K.INVALID_DECISION: 2, K.BAD_REQUEST: 2,
        K.PERMISSION_DENIED: 3, K.NOT_PERMITTED: 3, K.UNAUTHORIZED: 3,
        K.CONFLICT: 4, K.REFUSED: 4,
        K.STORE_UNAVAILABLE: 5, K.CORE_UNAVAILABLE: 5, K.CORE_TIMEOUT: 5, K.PAGING_UNAVAILABLE: 5,
        K.PAGING_TIMEOUT: 5, K.MAINTENANCE: 5, K.NOT_APPLIED: 5, K.SCHEMA_VIOLATION: 5,
        K.NOT_CONFIGURED: 8,
    }


def exit_code_of_kind(type_name: str | None, default: int = 4) -> int:
    """The exit code for an ApplicationError type (an error kind); `default` for anything else."""
    from contracts.errors import kind_of

    kind = kind_of(type_name)
    return _exit_codes().get(kind, default) if kind is not None else default


def refused(e: BaseException, what: str, wid: str) -> CliError:
    """A workflow's refusal of an Update (its validator's ApplicationError) as the CLI says it: one line,
    the exit code of its kind (who asked: 3; what was asked is incomplete: 2; not now: 4)."""
    cause = getattr(e, "cause", None)
    msg = str(getattr(cause, "message", None) or cause or e)
    return CliError(f"{what} refused by {wid}: {msg}", exit_code_of_kind(getattr(cause, "type", None)))


async def operator_of(store, actor: str):
    """The operator record of `actor` from the roster in etcd; an unknown name is refused (exit 3)."""
    op = await store.operator(actor)
    if op is None:
        raise CliError(f"unknown operator {actor!r} (see `rollbackctl operator list`)", 3)
    return op


async def refusal(client, e: BaseException, what: str, wid: str, actor: str) -> CliError:
    """`refused(...)`, after telling the workflow (signal REFUSED_SIGNAL): Temporal keeps no trace of an
    Update its validator rejected, so without this neither its record nor a drill's report would show who
    tried what. Best effort, within 3 s: the refusal stands either way."""
    from contracts.progress import REFUSED_SIGNAL, RefusedAttempt
    from core.aio import within

    err = refused(e, what, wid)
    why = str(err).split(f"refused by {wid}: ", 1)[-1]
    try:
        await within(3, client.get_workflow_handle(wid).signal(
            REFUSED_SIGNAL, RefusedAttempt(kind=what[:40], actor=(actor or "?")[:64], why=why[:500])))
    except Exception:  # noqa: BLE001 - the report is a courtesy; the refusal is what the user must see
        pass
    return err


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


def fit(rows: list[list[str]], headers: list[str], width: int, flexible: list[int]) -> list[list[str]]:
    """`rows` with the `flexible` columns cut (ending in "…") so the table is at most `width` wide: the
    widest flexible column gives way first, none below 8 characters."""
    widths = [max(len(str(x)) for x in col) for col in zip(headers, *rows)]
    while sum(widths) + 2 * (len(widths) - 1) > width:
        col = max(flexible, key=lambda i: widths[i])
        if widths[col] <= 8:
            break
        widths[col] -= 1
    return [[c if i not in flexible or len(str(c)) <= widths[i] else str(c)[: widths[i] - 1] + "…"
             for i, c in enumerate(r)] for r in rows]


def terminal_width() -> int:
    import shutil

    return shutil.get_terminal_size((120, 24)).columns


def links(wid: str) -> str:
    """Where to look: the workflow id and its page in Temporal's Web UI."""
    from core.settings import TemporalSettings

    return f"workflow {wid}\nWeb UI   {TemporalSettings().workflow_url(wid)}"


def report_action(args, wid: str, action: str, message: str) -> None:
    """What an accepted decision did, as text (with where to look) or, with --json, one object."""
    if getattr(args, "json", False):
        from core.settings import TemporalSettings

        print_json({"workflow_id": wid, "action": action, "accepted": True, "message": message,
                    "web_ui": TemporalSettings().workflow_url(wid)})
    else:
        print(f"{message}\n{links(wid)}")

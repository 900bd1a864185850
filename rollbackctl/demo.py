"""`make demo` (`python -m rollbackctl.demo`): the tool end to end, by itself, no prompts.

It starts the embedded stack (`rollbackctl.devstack.up()`: data and logs under `.dev/`, the
default ports unless the settings say otherwise), then runs the scenario STEPS in order, each
under a header, driving the real `rollbackctl` command so that what is printed is exactly what a
user sees. At the end it stops what it started (a stack that was already running is left alone),
unless KEEP=1, which leaves the stack up and says how to stop it.

Later issues extend the demo by appending steps:

    from rollbackctl.demo import step

    @step("Roll back to HL_MODE")
    def rollback(demo: Demo) -> None:
        demo.cli("rollback", "start", ...)

A step raises to fail the demo (exit 1); `demo.cli(...)` raises when a command exits non-zero
unless that code is listed in `ok=`.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

ROLLBACKCTL = str(Path(sys.executable).parent / "rollbackctl")
WIDTH = 78


class DemoError(RuntimeError):
    pass


@dataclass
class Demo:
    """What the steps share: the stack's environment and a few names."""

    env: dict[str, str]
    super_admin: str = "alice"
    risk_manager: str = "rita"
    second_super_admin: str = "sam"  # the two-person rule's other super admin
    started: list[str] = field(default_factory=list)
    notes: dict[str, Any] = field(default_factory=dict)

    def cli(self, *args: str, ok: tuple[int, ...] = (0,), show: bool = True,
            env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
        """Run `rollbackctl ARGS` as a user would; print the command line and its output."""
        if show:
            print(f"$ rollbackctl {' '.join(_quote(a) for a in args)}", flush=True)
        p = subprocess.run([ROLLBACKCTL, *args], env={**self.env, **(env or {})}, capture_output=True, text=True,
                           stdin=subprocess.DEVNULL, timeout=120)
        if show:
            sys.stdout.write(p.stdout)
            sys.stdout.write(p.stderr)
            sys.stdout.flush()
        if p.returncode not in ok:
            raise DemoError(f"`rollbackctl {' '.join(args)}` exited {p.returncode}: {p.stderr.strip()}")
        return p

    def cli_json(self, *args: str) -> Any:
        return json.loads(self.cli(*args, "--json", show=False).stdout)

    def incident(self, wid: str) -> dict | None:
        """The running incident `wid` as `rollbackctl incidents --json` shows it (None: not running)."""
        return next((r for r in self.cli_json("incidents") if r.get("workflow_id") == wid and "rule" in r), None)

    def progress(self, wid: str) -> dict:
        """`rollbackctl status WID --json`: a workflow's progress, quietly."""
        return self.cli_json("status", wid)

    @property
    def core_url(self) -> str:
        return self.env.get("ROLLBACKCTL_TRADING_CORE_URL", "http://127.0.0.1:8700").rstrip("/")

    @property
    def core_auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.env.get('ROLLBACKCTL_TRADING_CORE_TOKEN', 'dev-token')}"}

    def key_file(self, name: str) -> Path:
        return Path(self.env["ROLLBACKCTL_KEY_DIR"]) / f"{name}.key"

    def ensure_operator(self, name: str, role: str, show: bool = True) -> None:
        """`name` is an operator of `role` whose public key matches their key file under the demo's key
        directory (a stack kept from an earlier run keeps its operators and keys)."""
        from core import identity, keys

        path = self.key_file(name)
        pub = identity.public_key_text(keys.load_file(path, name)) if path.exists() else None
        key_args = ["--public-key", pub] if pub else ["--generate-key"]
        ops = {o["name"]: o for o in self.cli_json("operator", "list")}
        if name not in ops:
            self.cli("operator", "add", name, role, "--as", self.super_admin, *key_args, show=show)
        elif pub is None or ops[name].get("public_key") != pub:
            self.cli("operator", "rotate-key", name, "--as", self.super_admin, *key_args, show=show)
        elif show:
            print(f"({name} is already an operator ({ops[name]['role']}) with the key in {path})")

    def approve_change(self, pending: subprocess.CompletedProcess, approver: str, reason: str) -> None:
        """A two-person change printed PENDING: the other super admin approves it; wait until applied."""
        import re

        m = re.search(r"rollbackctl confirm (change-\S+)", pending.stdout)
        if m is None:
            raise DemoError("expected a pending two-person change")
        wid = m.group(1)
        self.cli("confirm", wid, "--as", approver, "--reason", reason)
        p = wait_until(f"{wid} to be applied (30 s)", lambda: self.progress(wid), lambda p: p.get("result"), 30)
        print(f"{wid}: {p['result']} ({p.get('detail')})")
        if p["result"] != "applied":
            raise DemoError(f"{wid} {p['result']}: {p.get('detail')}")

    def etcdctl(self, *args: str) -> None:
        from core import procs
        from core.settings import EtcdSettings

        endpoints = EtcdSettings().endpoints
        print(f"$ etcdctl {' '.join(_quote(a) for a in args)}", flush=True)
        p = subprocess.run([procs.binary("etcdctl"), "--endpoints", endpoints, *args],
                           capture_output=True, text=True, timeout=30)
        sys.stdout.write(p.stdout or p.stderr)
        sys.stdout.flush()


def wait_until(what: str, fetch: Callable[[], Any], pred: Callable[[Any], bool], timeout: float = 60.0,
               every: float = 0.1) -> Any:
    """Poll `fetch()` every `every` s until `pred` holds on its value (returned); DemoError after `timeout`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        v = fetch()
        if pred(v):
            return v
        time.sleep(every)
    raise DemoError(f"timed out waiting for {what}")


Step = Callable[[Demo], None]
STEPS: list[tuple[str, Step]] = []


def step(title: str) -> Callable[[Step], Step]:
    """Append a scenario step (runs in the order appended)."""
    def add(fn: Step) -> Step:
        STEPS.append((title, fn))
        return fn
    return add


def _quote(a: str) -> str:
    return a if a and all(c.isalnum() or c in "-_./:,=%" for c in a) else json.dumps(a)


def header(text: str, char: str = "=") -> None:
    print(f"\n{char * WIDTH}\n{text}\n{char * WIDTH}", flush=True)


# -- the scenario ------------------------------------------------------------------------------------

@step("Initialise the control matrix in etcd (never overwrites; bootstraps the first super admin and her key)")
def initialise(demo: Demo) -> None:
    demo.cli("init", "--super-admin", demo.super_admin, "--generate-key")
    from core import identity, keys

    ops = {o["name"]: o for o in demo.cli_json("operator", "list")}
    mine = identity.public_key_text(keys.load_file(demo.key_file(demo.super_admin)))
    if ops[demo.super_admin].get("public_key") != mine:
        raise DemoError(f"{demo.super_admin}'s key in etcd is not the one in {demo.key_file(demo.super_admin)}: "
                        "the stack's data and keys were separated (`rollbackctl dev down` and remove .dev/ to start over)")


@step("Add a risk manager and a second super admin, each with a key pair (only a super admin may)")
def add_risk_manager(demo: Demo) -> None:
    print("Every change and approval is signed with its operator's Ed25519 key; the private keys stay in\n"
          f"{demo.env['ROLLBACKCTL_KEY_DIR']} (mode 0600), the public keys go into etcd with the operators.")
    demo.ensure_operator(demo.risk_manager, "risk_manager")
    demo.ensure_operator(demo.second_super_admin, "super_admin")
    demo.cli("operator", "list")


@step("Every switch with its value, default, owner role and rollback value")
def show_switches(demo: Demo) -> None:
    demo.cli("switch", "list")


@step("One audited change: the risk manager lowers the hedge leverage")
def audited_change(demo: Demo) -> None:
    current = demo.cli_json("switch", "get", "hedge_max_leverage")["value"]
    target, why = (("2.5", "demo: hedge venue margin is thin, take less leverage") if current != 2.5
                   else ("3", "demo: hedge venue margin restored, back to the default"))
    demo.notes["change"] = ("hedge_max_leverage", target)
    print("A value outside the switch's bounds is refused with exit code 2, and nothing is written:")
    demo.cli("switch", "set", "hedge_max_leverage", "25", "--as", demo.risk_manager, "--reason", "typo", ok=(2,))
    print("\nA valid value five times further from the safe one (a misplaced decimal point?) is shown and asked again;"
          "\n--dry-run shows what a change would do and writes nothing:")
    demo.cli("switch", "set", "hedge_max_leverage", "15", "--as", demo.risk_manager, "--reason", "typo", ok=(2,))
    demo.cli("switch", "set", "hedge_max_leverage", target, "--as", demo.risk_manager, "--reason", why, "--dry-run")
    print("\nThe owner role (risk_manager) sets a valid value: the CLI signs it, the worker checks the signature and\n"
          "applies it; the change, its audit record (with the signature) and the nonce are one etcd transaction.\n"
          "--wait-applied then waits until every live trading-core instance (sim-1..3, the OFREP endpoint) has\n"
          "applied it, within the switch's latency class, or names the stragglers:")
    demo.cli("switch", "set", "hedge_max_leverage", target, "--as", demo.risk_manager,
             "--reason", why, "--wait-applied")
    demo.cli("switch", "get", "hedge_max_leverage")
    demo.cli("consumers")


@step("Paging: a test page and its resolve to every escalation level, on PagerDuty and Slack")
def paging_test(demo: Demo) -> None:
    demo.cli("paging", "test")


@step("The audit trail (one record per change set, hash-chained) and the raw etcd keys")
def show_audit(demo: Demo) -> None:
    demo.cli("audit", "--limit", "5")
    from core.settings import EtcdSettings

    prefix = EtcdSettings().prefix
    last = demo.cli_json("audit", "--limit", "1")[-1]
    print("\nOther tools read the same keys directly:")
    demo.etcdctl("get", f"{prefix}switches/hedge_max_leverage")
    demo.etcdctl("get", f"{prefix}audit/{last['id']}")


# -- running it --------------------------------------------------------------------------------------

def _running() -> set[str]:
    from rollbackctl import devstack

    return {r["name"] for r in devstack.status() if r["running"]}


# Scenario modules that append their steps (in this order) when imported.
SCENARIOS = ["rollbackctl.demo_rollback", "rollbackctl.demo_canary", "rollbackctl.demo_p0", "rollbackctl.demo_identity",
             "rollbackctl.demo_drill"]


def scenarios(only: str) -> list[str]:
    """The scenario modules to run: all, or those named in DEMO_SCENARIOS (e.g. "rollback,p0")."""
    names = [n.strip() for n in only.split(",") if n.strip()]
    known = {m.rsplit("_", 1)[-1]: m for m in SCENARIOS}
    unknown = [n for n in names if n not in known]
    if unknown:
        raise SystemExit(f"demo: unknown scenario(s) {', '.join(unknown)} in DEMO_SCENARIOS; known: {', '.join(known)}")
    return [known[n] for n in names] if names else list(SCENARIOS)


def main() -> int:
    import importlib

    from core import procs
    from rollbackctl import devstack

    for mod in scenarios(os.environ.get("DEMO_SCENARIOS", "")):
        importlib.import_module(mod)

    keep = os.environ.get("KEEP", "") not in ("", "0", "false", "no")
    t0 = time.monotonic()
    header("rollbackctl demo: the embedded stack, the control matrix, one audited change")
    header("Start the embedded stack (rollbackctl dev up)", "-")
    before = _running()
    demo: Demo | None = None
    code = 0
    try:
        try:
            st = devstack.up()
        except procs.StackError as e:
            print(f"\ndemo: cannot start the stack: {e}", file=sys.stderr)
            print("demo: is another stack running? `rollbackctl dev status`; or run the demo on other ports, e.g.\n"
                  "      ROLLBACKCTL_ETCD_ENDPOINTS=127.0.0.1:23790 ROLLBACKCTL_DEV_ETCD_PEER_PORT=23800 "
                  "TEMPORAL_ADDRESS=127.0.0.1:17233 ...  (see README, Settings)", file=sys.stderr)
            return 1
        finally:
            started = sorted(_running() - before)
        print(f"\nWeb UI: {st.ui_url}    data and logs: {st.dir}")
        # The operators' private keys live with the stack's data (in production: each on its own machine).
        demo = Demo(env={"ROLLBACKCTL_KEY_DIR": str(st.dir / "keys"), **os.environ, **st.env()}, started=started)
        for i, (title, fn) in enumerate(STEPS, start=1):
            header(f"Step {i}/{len(STEPS)}: {title}", "-")
            fn(demo)
        header(f"Demo finished in {time.monotonic() - t0:.1f}s")
    except (DemoError, subprocess.TimeoutExpired) as e:
        print(f"\ndemo: FAILED: {e}", file=sys.stderr)
        code = 1
    finally:
        if keep:
            print("KEEP=1: the stack stays up. Stop it with `rollbackctl dev down` (or `make down`).")
        elif started:
            header("Stop what the demo started", "-")
            devstack.down(only=started)
        elif before:
            print("The stack was already running before the demo: left as it was.")
    return code


if __name__ == "__main__":
    # Run the importable module, not __main__: scenario modules append to rollbackctl.demo.STEPS.
    from rollbackctl.demo import main as _main

    code = _main()
    sys.stdout.flush()
    sys.stderr.flush()
    sys.exit(code)

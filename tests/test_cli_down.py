"""Every command against dead endpoints: one line naming what is down, exit 5, never a traceback.

etcd and Temporal are given loopback ports nothing listens on (connection refused at once), signing
on (the production shape) and off (a local drill, where the CLI writes etcd itself). Issue 16 item 4:
"every workflow command and `switch set` prints a Python traceback and exits 1 (the README promises 5)".
"""

from __future__ import annotations

import pytest

from core import procs
from tests.support.store_helpers import run_cli

COMMANDS = [
    ["switch", "list"], ["switch", "get", "routing_mode"],
    ["switch", "set", "hedge_max_leverage", "2", "--as", "rita", "--reason", "r"],
    ["audit"], ["audit", "verify"], ["operator", "list"],
    ["rollback", "start", "--severity", "critical_path_failure", "--scope", "cross_module", "--incident", "D-1",
     "--as", "oscar", "--reason", "r"],
    ["degrade", "1", "--incident", "D-2", "--as", "oscar", "--reason", "r"],
    ["confirm", "rollback-D-1", "--as", "oscar"], ["proceed", "rollback-D-1", "--as", "oscar"],
    ["cancel", "rollback-D-1", "--as", "oscar", "--reason", "r"],
    ["escalate", "rollback-D-1", "--as", "oscar", "--reason", "r"],
    ["fix", "rollback-D-1", "--as", "rita", "--reference", "x", "--tests-passed"],
    ["status"], ["status", "rollback-D-1"], ["status", "rollback-D-1", "--json"],
    ["incidents"], ["ack", "incident-x", "--as", "oscar"],
    ["resolve", "incident-x", "--as", "oscar", "--reason", "r"],
    ["canary", "status", "phase2"], ["canary", "start", "phase2", "--as", "rita", "--reason", "r"],
    ["paging", "status"],
]


@pytest.fixture(scope="module")
def dead(tmp_path_factory):
    key_dir = tmp_path_factory.mktemp("keys")
    for name in ("rita", "oscar"):  # keys exist: the failure is the servers, not a missing key
        assert run_cli("keygen", "--operator", name, env={"ROLLBACKCTL_KEY_DIR": str(key_dir)}).code == 0
    return {"ROLLBACKCTL_ETCD_ENDPOINTS": f"127.0.0.1:{procs.free_port()}", "ROLLBACKCTL_ETCD_CONNECT_TIMEOUT_S": "1",
            "TEMPORAL_ADDRESS": f"127.0.0.1:{procs.free_port()}", "ROLLBACKCTL_KEY_DIR": str(key_dir),
            "ROLLBACKCTL_ETCD_PREFIX": "/dead/"}


@pytest.mark.parametrize("signing", ["on", "off"])
@pytest.mark.parametrize("args", COMMANDS, ids=[" ".join(a[:2]) for a in COMMANDS])
def test_a_command_with_etcd_and_temporal_down_says_so_in_one_line(dead, args, signing):
    r = run_cli(*args, env={**dead, "ROLLBACKCTL_SIGNING": signing}, timeout=60)
    assert "Traceback" not in r.err, r.err[-1500:]
    assert r.code == 5, (r.code, r.out[-300:], r.err[-500:])
    errors = [ln for ln in r.err.splitlines() if ln.startswith("rollbackctl: error:")]
    assert len(errors) == 1 and ("etcd" in errors[0] or "Temporal" in errors[0]), r.err

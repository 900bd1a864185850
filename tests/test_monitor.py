"""The P0 monitor: detection (pure, on a fake clock), the loop's resilience, the auto mode switch (real etcd)."""

from __future__ import annotations

import asyncio
from datetime import datetime, timedelta, timezone

import pytest
from temporalio.exceptions import ApplicationError

from activities.monitor import AutoMode, Detector, Monitor
from tests.support.fixtures_sim import apply
from tests.support.standins import HEALTHY
from contracts.incidents import ConditionReport, KeyState, MonitorInput, MonitorState

T0 = datetime(2026, 1, 1, tzinfo=timezone.utc)


class Clock:
    def __init__(self) -> None:
        self.t = T0

    def __call__(self) -> datetime:
        return self.t

    def tick(self, s: float = 1.0) -> datetime:
        self.t += timedelta(seconds=s)
        return self.t


def healthy(**over) -> dict:
    h = {**HEALTHY, "order_price_deviation": {"BTC": 0.001, "ETH": 0.002}, "volatility_pct": {"BTC": 1.0, "ETH": 1.2}}
    h.update(over)
    return h


def fired(changes: list[KeyState]) -> list[tuple[str, str | None, bool]]:
    return [(k.rule, k.symbol, k.firing) for k in changes]


# -- detection ------------------------------------------------------------------------------------------
def test_healthy_reads_fire_nothing():
    d, c = Detector(MonitorState()), Clock()
    for _ in range(10):
        assert d.observe(healthy(), c.tick()) == []


def test_poll_hold_three_reads_then_one_incident_while_it_fires():
    d, c = Detector(MonitorState()), Clock()
    low = healthy(hot_wallet_usd=50_000)
    assert d.observe(low, c.tick()) == [] and d.observe(low, c.tick()) == []
    first = c.t + timedelta(seconds=-1)
    ch = d.observe(low, c.tick())
    assert fired(ch) == [("hot_wallet", None, True)] and ch[0].since == first
    for _ in range(20):
        assert d.observe(low, c.tick()) == []  # still firing: no second transition
    assert d.observe(healthy(hot_wallet_usd=120_000), c.tick()) == [], "between trigger and clear: still firing"
    assert fired(d.observe(healthy(), c.tick())) == [("hot_wallet", None, False)]


def test_a_broken_streak_starts_again():
    d, c = Detector(MonitorState()), Clock()
    for v in (1.4, 1.4, 1.6, 1.4, 1.4):
        assert d.observe(healthy(hl_margin_ratio=v), c.tick()) == []
    assert fired(d.observe(healthy(hl_margin_ratio=1.4), c.tick())) == [("hl_margin", None, True)]
    assert d.observe(healthy(hl_margin_ratio=1.8), c.tick()) == [], "hysteresis: clears at 200%"
    assert fired(d.observe(healthy(hl_margin_ratio=2.1), c.tick())) == [("hl_margin", None, False)]


def test_a_30_second_hl_blip_opens_nothing_a_61_second_outage_does():
    d, c = Detector(MonitorState()), Clock()
    for s in range(1, 31):
        assert d.observe(healthy(hl_connected=False, hl_disconnected_for_s=float(s)), c.tick()) == []
    assert d.observe(healthy(), c.tick()) == []
    for s in range(1, 61):
        assert d.observe(healthy(hl_connected=False, hl_disconnected_for_s=float(s)), c.tick()) == []
    ch = d.observe(healthy(hl_connected=False, hl_disconnected_for_s=61.0), c.tick())
    assert fired(ch) == [("hl_disconnection", None, True)]
    assert ch[0].since == c.t - timedelta(seconds=61), "the outage began when the core says"
    assert fired(d.observe(healthy(), c.tick())) == [("hl_disconnection", None, False)]


def test_an_unreachable_core_is_the_hl_api_rule_after_60_seconds():
    d, c = Detector(MonitorState()), Clock()
    d.observe(healthy(), c.tick())
    last_ok = c.t
    for _ in range(60):
        assert d.observe(None, c.tick(), "CoreTimeout") == []
    ch = d.observe(None, c.tick(), "CoreUnavailable: 500")
    assert fired(ch) == [("hl_disconnection", None, True)]
    assert ch[0].values["core_unreachable_for_s"] == 61 and ch[0].since == last_ok
    assert d.state.failed_polls == 61 and d.state.last_error.startswith("CoreUnavailable")
    # the other rules were neither fired nor reset by unreadable polls
    assert fired(d.observe(healthy(hl_connected=True), c.tick())) == [("hl_disconnection", None, False)]


def test_unreadable_reads_neither_count_nor_reset_a_hold():
    d, c = Detector(MonitorState()), Clock()
    low = healthy(asset_mismatch_ratio=0.002)
    assert d.observe(low, c.tick()) == []
    assert d.observe(None, c.tick(), "timeout") == []
    assert fired(d.observe(low, c.tick())) == [("asset_mismatch", None, True)]


def test_per_symbol_rule_fires_per_symbol():
    d, c = Detector(MonitorState()), Clock()
    dev = healthy(order_price_deviation={"BTC": 0.07, "ETH": 0.002})
    d.observe(dev, c.tick())
    assert fired(d.observe(dev, c.tick())) == [("order_deviation", "BTC", True)]
    both = healthy(order_price_deviation={"BTC": 0.07, "ETH": 0.08})
    d.observe(both, c.tick())
    assert fired(d.observe(both, c.tick())) == [("order_deviation", "ETH", True)]
    # a symbol missing from a read is unknown, not clear
    assert d.observe(healthy(order_price_deviation={"ETH": 0.08}), c.tick()) == []
    assert fired(d.observe(healthy(order_price_deviation={"BTC": 0.001, "ETH": 0.08}), c.tick())) == [
        ("order_deviation", "BTC", False)]


def test_liquidation_either_trigger():
    for bad in ({"liquidation_detection_failures": 5}, {"liquidation_execution_failure_rate": 0.11}):
        d, c = Detector(MonitorState()), Clock()
        d.observe(healthy(**bad), c.tick())
        assert fired(d.observe(healthy(**bad), c.tick())) == [("liquidation_failure", None, True)]
    d, c = Detector(MonitorState()), Clock()
    for _ in range(5):
        assert d.observe(healthy(liquidation_detection_failures=4, liquidation_execution_failure_rate=0.10), c.tick()) == []


# -- the loop ----------------------------------------------------------------------------------------------
class Port:
    """Records deliveries; fails the first `fail` of them (Temporal unavailable)."""

    def __init__(self, fail: int = 0) -> None:
        self.got: list[tuple[str, str | None, bool]] = []
        self.fail = fail

    async def deliver(self, ks: KeyState, report: ConditionReport) -> None:
        if self.fail:
            self.fail -= 1
            raise ConnectionError("temporal unavailable")
        self.got.append((ks.rule, ks.symbol, report.firing))

    async def open_keys(self) -> list[tuple[str, str | None]]:
        return []


class Core:
    """A health source that can answer, fail like the trading core does, or hang."""

    def __init__(self) -> None:
        self.health = healthy()
        self.mode = "ok"
        self.reads = 0

    async def read(self, timeout_s: float) -> dict:
        self.reads += 1
        if self.mode == "500":
            raise ApplicationError("trading core unavailable: GET /v1/health answered 500", type="CoreUnavailable")
        if self.mode == "malformed":
            raise ApplicationError("trading core broke the contract", type="SchemaViolation", non_retryable=True)
        if self.mode == "hang":
            await asyncio.sleep(3600)
        if self.mode == "bug":
            raise KeyError("hl_margin_ratio")
        return dict(self.health)


async def test_monitor_survives_500s_timeouts_and_broken_bodies_and_keeps_detecting():
    core, port, clock = Core(), Port(), Clock()
    m = Monitor(MonitorInput(interval_s=0.05), core.read, port, clock=clock)
    m.timeout_s = 0.05  # a hanging read is given up quickly
    for mode in ("500", "hang", "malformed", "bug"):
        core.mode = mode
        for _ in range(3):
            clock.tick()
            assert await m.poll() == []
    assert m.state.failed_polls == 12 and m.state.last_error.startswith("KeyError")
    core.mode, core.health = "ok", healthy(hot_wallet_usd=10_000)
    for _ in range(3):
        clock.tick()
        await m.poll()
    await m.settle()
    assert port.got == [("hot_wallet", None, True)]
    assert m.state.unreachable_since is None and m.state.last_ok_at == clock.t
    # down for more than a minute: the HL/API rule
    core.mode = "500"
    for _ in range(62):
        clock.tick()
        await m.poll()
    await m.settle()
    assert port.got[-1] == ("hl_disconnection", None, True)
    await m.close()


async def test_an_undelivered_change_is_retried_on_the_next_poll():
    core, port, clock = Core(), Port(fail=2), Clock()
    core.health = healthy(asset_mismatch_ratio=0.01)
    m = Monitor(MonitorInput(interval_s=0.05), core.read, port, clock=clock)
    for _ in range(5):
        clock.tick()
        await m.poll()
        await m.settle()
    assert port.got == [("asset_mismatch", None, True)] and m.delivery_errors == 2
    core.health = healthy()
    clock.tick()
    await m.poll()
    await m.settle()
    assert port.got[-1] == ("asset_mismatch", None, False)


async def test_run_loop_polls_at_the_interval_and_stops():
    core, port = Core(), Port()
    m = Monitor(MonitorInput(interval_s=0.02), core.read, port)
    loop = asyncio.get_running_loop()
    beats: list[int] = []
    state = await m.run(stop_at=loop.time() + 0.3, beat=lambda st: beats.append(st.polls))
    assert 8 <= state.polls <= 16 and beats == list(range(1, state.polls + 1))


async def test_a_cancellation_that_arrives_as_a_read_completes_stops_the_loop():
    """Python 3.11's `asyncio.wait_for` returns the inner result when the cancellation lands after the
    inner read finished but before wait_for resumed, and the cancellation is lost (CPython gh-86296,
    fixed in 3.12 by building wait_for on asyncio.timeout). The monitor timed its reads with it: CI saw
    a cancelled monitor go on polling (stop 29, test_incident_e2e). Here the read itself schedules the
    cancellation, so it lands in exactly that window, every time."""
    core, port = Core(), Port()
    m = Monitor(MonitorInput(interval_s=0.01), core.read, port)
    loop = asyncio.get_running_loop()
    task: asyncio.Task | None = None
    plain = core.read

    async def read(timeout_s: float) -> dict:
        if core.reads == 2:
            loop.call_soon(task.cancel)  # runs before the read task's done callbacks wake wait_for
        return await plain(timeout_s)

    m.read_health = read
    task = asyncio.create_task(m.run())
    done, _ = await asyncio.wait({task}, timeout=5)
    assert done, f"the monitor went on polling after its cancellation ({core.reads} reads)"
    assert task.cancelled() and core.reads == 3


# -- auto mode switch (real etcd) ----------------------------------------------------------------------------
class Guard:
    def __init__(self) -> None:
        self.busy: str | None = None

    async def rollback_active(self) -> str | None:
        return self.busy


async def routing(store):
    return (await store.get("routing_mode"))


async def test_auto_mode_switch_forces_hl_and_releases_only_what_it_forced(store):
    from manual import alerts

    guard = Guard()
    auto, st = AutoMode(store, guard), MonitorState()
    volatile = healthy(volatility_pct={"BTC": 7.5, "ETH": 1.0})
    # off: nothing happens
    await auto.step(st, volatile)
    assert (await routing(store)).value == "HL_MODE" and st.auto.last == "auto_mode_switch off"
    await apply(store, "alice", routing_mode="NORMAL_MODE", global_betting_enabled=True, auto_mode_switch=True)
    await auto.step(st, volatile)
    rm = await routing(store)
    assert rm.value == "HL_MODE" and rm.updated_by == "monitor" and "volatility BTC 7.5%" in st.auto.last
    rec = (await store.audit(1))[0]
    assert (rec.actor, rec.authority, rec.changes[0].old) == ("monitor", "preapproved", "NORMAL_MODE")
    await auto.step(st, volatile)
    assert len([a for a in await store.audit() if a.actor == "monitor"]) == 1, "forced once"
    # back to normal: released only after release_polls calm reads, and not while a rollback runs
    calm = healthy()
    for _ in range(alerts.AUTO_MODE.release_polls - 1):
        await auto.step(st, calm)
    assert (await routing(store)).value == "HL_MODE"
    guard.busy = "rollback-inc-7 is running"
    await auto.step(st, calm)
    assert (await routing(store)).value == "HL_MODE" and "withheld" in st.auto.last
    guard.busy = None
    await auto.step(st, calm)
    rm = await routing(store)
    assert rm.value == "NORMAL_MODE" and rm.updated_by == "monitor" and "released" in st.auto.last
    # HL latency forces too (the threshold read live from etcd)
    await apply(store, "rita", force_hl_latency_ms=300)
    await auto.step(st, healthy(hl_latency_ms=450))
    assert (await routing(store)).value == "HL_MODE"


async def test_auto_mode_switch_never_releases_what_a_human_set_since(store):
    from manual import alerts

    auto, st = AutoMode(store, Guard()), MonitorState()
    await apply(store, "alice", routing_mode="NORMAL_MODE", global_betting_enabled=True, auto_mode_switch=True)
    await auto.step(st, healthy(hl_latency_ms=900))
    assert (await routing(store)).updated_by == "monitor"
    # a human sets HL_MODE themselves (same value, their write now)
    await apply(store, "rita", routing_mode="BETTING_MODE")
    await apply(store, "rita", routing_mode="HL_MODE")
    for _ in range(alerts.AUTO_MODE.release_polls + 5):
        await auto.step(st, healthy())
    rm = await routing(store)
    assert rm.value == "HL_MODE" and rm.updated_by == "rita"


async def test_auto_mode_switch_leaves_betting_mode_to_a_risk_manager(store):
    from manual import alerts

    auto, st = AutoMode(store, Guard()), MonitorState()
    await apply(store, "alice", routing_mode="BETTING_MODE", global_betting_enabled=True, auto_mode_switch=True)
    await auto.step(st, healthy(volatility_pct={"ETH": 9.0}))
    assert (await routing(store)).value == "HL_MODE"
    for _ in range(alerts.AUTO_MODE.release_polls):
        await auto.step(st, healthy())
    assert (await routing(store)).value == "HL_MODE"
    assert "not a pre-approved move" in st.auto.last


@pytest.mark.parametrize("mode", ["500", "hang"])
async def test_monitor_keeps_auto_mode_and_detection_apart(store, mode):
    """A hung or failing auto mode step (etcd) never stops detection."""

    class SlowStore:
        async def snapshot(self):
            if mode == "hang":
                await asyncio.sleep(3600)
            raise ConnectionError("etcd unavailable")

    core, port, clock = Core(), Port(), Clock()
    core.health = healthy(hot_wallet_usd=1.0)
    m = Monitor(MonitorInput(interval_s=0.05), core.read, port, AutoMode(SlowStore(), Guard()), clock=clock)
    for _ in range(3):
        clock.tick()
        await m.poll()
    await asyncio.wait_for(asyncio.gather(*m._inflight.values()), 5)
    assert port.got == [("hot_wallet", None, True)]
    await m.close()


class Ends:
    """The end watch's port: counts its looks; fails the first `fail` (Temporal unavailable)."""

    def __init__(self, fail: int = 0) -> None:
        self.looks: list[datetime] = []
        self.fail = fail

    async def step(self, state) -> list[str]:
        if self.fail:
            self.fail -= 1
            raise ConnectionError("temporal unavailable")
        self.looks.append(state.polls)
        return []


async def test_the_end_watch_looks_every_end_watch_s_beside_the_polls_and_survives_temporal_down():
    core, port, clock, ends = Core(), Port(), Clock(), Ends(fail=1)
    m = Monitor(MonitorInput(interval_s=1.0, end_watch_s=10.0), core.read, port, clock=clock, ends=ends)
    for _ in range(25):  # polls at 1 s .. 25 s: looks at the 1st (fails), 11th and 21st
        clock.tick()
        await m.poll()
        await m.settle()
    assert ends.looks == [11, 21] and m.state.polls == 25  # a failed look never stops the polls
    await m.close()

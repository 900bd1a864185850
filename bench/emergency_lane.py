"""The emergency lane's latency: a signed `routing_mode=HL_MODE` applied without Temporal.

Target (the manual's "critical <1 s"): lane request -> applied p99 < 1 s, and `rollbackctl switch set
routing_mode HL_MODE` as a whole CLI process, with Temporal unreachable, < 1 s at p50. Cases, each
sample preceded (untimed) by a write putting routing_mode back to NORMAL_MODE:
- apply_direct:  the same move through SwitchStore.apply in-process (the etcd transaction alone)
- lane_http:     POST /v1/emergency with a signed request: the lane's checks (key, nonce, revision,
                 role), the same transaction, the HTTP round trip; the ratio to apply_direct is the lane's cost
- cli_process:   the whole CLI (Python start, the refused Temporal connect, signing, the lane)
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

from activities.emergency import EmergencyLane, create_app
from activities.switch_store import SwitchStore
from bench.store_latency import summary
from contracts.changes import Authority, ChangeSetRequest, SwitchChange
from contracts.emergency import EMERGENCY_PATH, EmergencyRequest
from contracts.roles import Role
from core import identity, keys, procs

ROLLBACKCTL = str(Path(sys.executable).parent / "rollbackctl")


async def run(st, n: int = 200, cli_runs: int = 10) -> dict:
    import httpx
    import uvicorn

    prefix = f"/bench-lane-{uuid.uuid4().hex[:8]}/"
    store = SwitchStore(st.etcd, prefix)
    await store.init(super_admin="alice", actor="alice")
    key_dir = Path(tempfile.mkdtemp(prefix="rbctl-bench-lane-keys-"))
    pub = keys.generate(key_dir / "oscar.key")
    await store.add_operator("oscar", Role.ON_CALL, actor="alice", public_key=pub)
    key = keys.load_file(key_dir / "oscar.key", "oscar")
    port = procs.free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(EmergencyLane(store)), host="127.0.0.1", port=port,
                                           log_level="warning", access_log=False, lifespan="off"))
    server.install_signal_handlers = lambda: None
    task = asyncio.create_task(server.serve())
    url = f"http://127.0.0.1:{port}"

    async def back() -> int:
        await store.apply(ChangeSetRequest(change_id=f"b-{uuid.uuid4().hex}", actor="alice", reason="bench reset",
                                           changes=[SwitchChange(switch="routing_mode", value="NORMAL_MODE")]))
        return (await store.get("routing_mode")).revision

    async def direct() -> float:
        await back()
        t = time.perf_counter()
        await store.apply(ChangeSetRequest(change_id=f"d-{uuid.uuid4().hex}", actor="oscar", reason="bench",
                                           authority=Authority.PREAPPROVED,
                                           changes=[SwitchChange(switch="routing_mode", value="HL_MODE")]))
        return (time.perf_counter() - t) * 1000

    async def lane(http: httpx.AsyncClient) -> float:
        rev = await back()
        p = identity.sign(key, identity.SignedRequest(actor="oscar", nonce=identity.new_nonce(), action="switch.set",
                                                      target="switch:routing_mode", revision=rev,
                                                      values={"value": "HL_MODE", "reason": "bench"}))
        body = EmergencyRequest(proof=p).model_dump_json()
        t = time.perf_counter()
        r = await http.post(url + EMERGENCY_PATH, content=body)
        ms = (time.perf_counter() - t) * 1000
        assert r.status_code == 200, r.text
        return ms

    try:
        while not server.started:
            await asyncio.sleep(0.01)  # uvicorn's own readiness flag (bounded by the bench's run)
        async with httpx.AsyncClient() as http:
            for _ in range(5):  # warm-up
                await direct()
                await lane(http)
            d, lanes = [], []
            for _ in range(n):  # paired, interleaved: the same load on both
                d.append(await direct())
                lanes.append(await lane(http))
        env = {**{k: v for k, v in os.environ.items() if not k.startswith(("ROLLBACKCTL_", "TEMPORAL_"))},
               "ROLLBACKCTL_ETCD_ENDPOINTS": st.env["ROLLBACKCTL_ETCD_ENDPOINTS"], "ROLLBACKCTL_ETCD_PREFIX": prefix,
               "TEMPORAL_ADDRESS": f"127.0.0.1:{procs.free_port()}", "ROLLBACKCTL_KEY_DIR": str(key_dir),
               "ROLLBACKCTL_EMERGENCY_URLS": url}
        cli = []
        for _ in range(cli_runs):
            await back()
            t = time.perf_counter()
            p = await asyncio.to_thread(subprocess.run, [ROLLBACKCTL, "switch", "set", "routing_mode", "HL_MODE", "--as",
                                                         "oscar", "--reason", "bench"], env=env, capture_output=True,
                                        text=True, timeout=60)
            cli.append((time.perf_counter() - t) * 1000)
            assert p.returncode == 0 and "emergency lane" in p.stdout, (p.returncode, p.stdout, p.stderr)
    finally:
        server.should_exit = True
        await task
    ls, ds = summary(lanes), summary(d)
    return {"apply_direct_ms": ds, "lane_http_ms": ls, "cli_process_ms": summary(cli),
            "lane_over_direct_p50": round(ls["p50"] / ds["p50"], 2),
            "target_lane_p99_under_1s": ls["p99"] < 1000, "target_cli_p50_under_1s": summary(cli)["p50"] < 1000}

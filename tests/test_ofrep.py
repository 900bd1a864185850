"""The OFREP endpoint (rollbackctl/ofrep.py) against the protocol's OpenAPI
(github.com/open-feature/protocol, service/openapi.yaml: single and bulk evaluation, ETag / If-None-Match
with 304, FLAG_NOT_FOUND 404, INVALID_CONTEXT / PARSE_ERROR 400, 401) and through the official Python
clients nobody here wrote: `openfeature-sdk` with `openfeature-provider-ofrep` (which, as published,
requires `variant` and a `reason` among OpenFeature's, and type-checks floats as floats)."""

from __future__ import annotations

import asyncio
from contextlib import asynccontextmanager

import httpx
import pytest
import uvicorn

from core import procs
from core.watcher import SwitchWatcher
from manual import switches
from rollbackctl.ofrep import Ofrep
from tests.support.fixtures_sim import apply
from tests.support.waits import wait_for_value

TOKEN = "t-" + "x" * 30
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@asynccontextmanager
async def endpoint(store, serve: bool = False):
    watcher = SwitchWatcher(store.etcd, store.prefix, observe=False)
    await watcher.start()
    app = Ofrep(watcher, TOKEN).app()
    try:
        if not serve:
            async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://ofrep") as c:
                yield c, watcher
            return
        port = procs.free_port()
        server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="off"))
        task = asyncio.create_task(server.serve())
        while not server.started:
            await asyncio.sleep(0.02)
        try:
            yield f"http://127.0.0.1:{port}", watcher
        finally:
            server.should_exit = True
            await task
    finally:
        await watcher.stop()


async def test_single_evaluation_follows_the_contract(store):
    await apply(store, "alice", routing_mode="BETTING_MODE")
    async with endpoint(store) as (c, watcher):
        r = await c.post("/ofrep/v1/evaluate/flags/routing_mode", json={"context": {"targetingKey": "x"}}, headers=AUTH)
        assert r.status_code == 200
        body = r.json()
        kv = await store.etcd.get(store.switch_key("routing_mode"))
        assert body["key"] == "routing_mode" and body["value"] == "BETTING_MODE" and body["reason"] == "STATIC"
        assert body["variant"] == "BETTING_MODE" and body["metadata"]["revision"] == kv.mod_revision
        assert body["metadata"]["latency_class"] == "<1s" and body["metadata"]["updated_by"] == "alice"
        for sw in switches.SWITCHES:  # every switch answers, typed as OpenFeature types it
            v = (await c.post(f"/ofrep/v1/evaluate/flags/{sw.name}", headers=AUTH)).json()["value"]
            want = {"bool": bool, "enum": str, "money": float, "float": float, "int": int, "symbols": list}[sw.type.value]
            assert type(v) is want, (sw.name, v)


@pytest.mark.parametrize("path,body,headers,status,code", [
    ("/ofrep/v1/evaluate/flags/routing_mode", {}, {}, 401, None),
    ("/ofrep/v1/evaluate/flags/routing_mode", {}, {"Authorization": "Bearer wrong"}, 401, None),
    ("/ofrep/v1/evaluate/flags/no_such_switch", {}, AUTH, 404, "FLAG_NOT_FOUND"),
    ("/ofrep/v1/evaluate/flags/routing_mode", {"context": "user-1"}, AUTH, 400, "INVALID_CONTEXT"),
    ("/ofrep/v1/evaluate/flags/routing_mode", b"{not json", AUTH, 400, "PARSE_ERROR"),
    ("/ofrep/v1/evaluate/flags", {"context": [1]}, AUTH, 400, "INVALID_CONTEXT"),
    ("/ofrep/v1/evaluate/flags", {}, {"X-API-Key": "wrong"}, 401, None),
])
async def test_refusals_carry_the_protocols_error_codes(store, path, body, headers, status, code):
    async with endpoint(store) as (c, _):
        kw = {"content": body} if isinstance(body, bytes) else {"json": body}
        r = await c.post(path, headers=headers, **kw)
        assert r.status_code == status, r.text
        if code:
            assert r.json()["errorCode"] == code and r.json()["errorDetails"]
        if status == 401:
            assert r.headers["www-authenticate"] == "Bearer"


async def test_bulk_evaluation_with_etag_and_304(store):
    async with endpoint(store) as (c, watcher):
        r = await c.post("/ofrep/v1/evaluate/flags", json={}, headers={"X-API-Key": TOKEN})
        assert r.status_code == 200 and len(r.json()["flags"]) == len(switches.SWITCHES)
        tag = r.headers["etag"]
        r = await c.post("/ofrep/v1/evaluate/flags", json={}, headers={**AUTH, "If-None-Match": tag})
        assert r.status_code == 304 and r.content == b""
        res = await apply(store, "alice", hedge_max_leverage=4.5)
        await wait_for_value(lambda: asyncio.sleep(0, watcher.revision), lambda rev: rev >= res.revision, 5,
                             "the watch to see the change")
        r = await c.post("/ofrep/v1/evaluate/flags", json={}, headers={**AUTH, "If-None-Match": tag})
        assert r.status_code == 200 and r.headers["etag"] != tag
        lev = next(f for f in r.json()["flags"] if f["key"] == "hedge_max_leverage")
        assert lev["value"] == 4.5 and lev["metadata"]["revision"] == res.revision
        conf = (await c.get("/ofrep/v1/configuration", headers=AUTH)).json()
        assert conf["capabilities"]["cacheInvalidation"]["polling"]["enabled"] is True


async def test_the_official_openfeature_client_reads_every_type_and_sees_a_change(store):
    from openfeature import api
    from openfeature.contrib.provider.ofrep import OFREPProvider
    from openfeature.exception import ErrorCode

    async with endpoint(store, serve=True) as (url, watcher):
        api.set_provider(OFREPProvider(url, headers_factory=lambda: dict(AUTH)))
        client = api.get_client()

        def read_all():
            return {
                "global_betting_enabled": client.get_boolean_details("global_betting_enabled", True),
                "routing_mode": client.get_string_details("routing_mode", "?"),
                "normal_threshold": client.get_float_details("normal_threshold", -1.0),
                "hedge_max_leverage": client.get_float_details("hedge_max_leverage", -1.0),
                "betting_traffic_pct": client.get_integer_details("betting_traffic_pct", -1),
                "missing": client.get_boolean_details("no_such_switch", True),
            }

        got = await asyncio.to_thread(read_all)
        current = {n: (await store.get(n)).value for n in got if n != "missing"}
        for name, want in current.items():
            d = got[name]
            assert d.error_code is None and d.value == want and d.reason in ("STATIC", "DEFAULT"), (name, d)
        assert got["missing"].value is True and got["missing"].error_code == ErrorCode.FLAG_NOT_FOUND
        sym = [s for s in switches.SWITCHES if s.type is switches.SwitchType.SYMBOLS]
        if sym:
            d = await asyncio.to_thread(client.get_object_details, sym[0].name, ["?"])
            assert d.error_code is None and list(d.value) == list((await store.get(sym[0].name)).value)

        await apply(store, "alice", routing_mode="BETTING_MODE")
        d = await wait_for_value(lambda: asyncio.to_thread(client.get_string_details, "routing_mode", "?"),
                                 lambda d: d.value == "BETTING_MODE", 5, "the client to see the change")
        assert d.flag_metadata["revision"] == (await store.etcd.get(store.switch_key("routing_mode"))).mod_revision

        api.set_provider(OFREPProvider(url, headers_factory=lambda: {"Authorization": "Bearer wrong"}))
        d = await asyncio.to_thread(api.get_client().get_string_details, "routing_mode", "fallback")
        assert d.value == "fallback" and d.error_code == ErrorCode.GENERAL and "unauthorized" in d.error_message


async def test_serve_refuses_to_start_without_a_token(store, etcd_server):
    import os

    from tests.support.store_helpers import run_cli

    env = {"ROLLBACKCTL_ETCD_ENDPOINTS": etcd_server.endpoint, "ROLLBACKCTL_ETCD_PREFIX": store.prefix,
           "ROLLBACKCTL_OFREP_LISTEN": f"127.0.0.1:{procs.free_port()}"}
    r = await asyncio.to_thread(run_cli, "ofrep", "serve", env=env)
    assert r.code == 2 and "ROLLBACKCTL_OFREP_TOKEN is not set" in r.err and len(r.err.strip().splitlines()) == 1, r.err
    assert os.environ.get("ROLLBACKCTL_OFREP_TOKEN") is None


async def test_the_official_node_client_reads_the_matrix(store):
    """@openfeature/server-sdk with @openfeature/ofrep-provider (npm, pinned in tests/node_ofrep/, installed
    by `make test`), run by Node against the endpoint: the same values, reasons and revisions."""
    import json
    import shutil
    from pathlib import Path

    here = Path(__file__).parent / "node_ofrep"
    node = shutil.which("node")
    if node is None or not (here / "node_modules" / "@openfeature" / "ofrep-provider").exists():
        pytest.fail("Node or the OpenFeature Node packages are missing: apt-get install nodejs npm, then "
                    "`make test` (it runs npm ci in tests/node_ofrep)")
    await apply(store, "alice", routing_mode="BETTING_MODE", hedge_max_leverage=4.5)
    kinds = {"bool": "boolean", "enum": "string", "money": "number", "float": "number", "int": "number",
             "symbols": "object"}
    flags = [f"{sw.name}:{kinds[sw.type.value]}" for sw in switches.SWITCHES] + ["no_such_switch:boolean"]
    async with endpoint(store, serve=True) as (url, _):
        p = await asyncio.create_subprocess_exec(node, str(here / "evaluate.mjs"), url, TOKEN, *flags, cwd=here,
                                                 stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        out, err = await asyncio.wait_for(p.communicate(), 60)
    assert p.returncode == 0, err.decode()
    got = json.loads(out)
    for sw in switches.SWITCHES:
        st = await store.get(sw.name)
        d = got[sw.name]
        assert d["errorCode"] is None and d["reason"] == "STATIC", (sw.name, d)
        assert d["value"] == (list(st.value) if sw.type.value == "symbols" else st.value), (sw.name, d, st.value)
        assert d["metadata"]["revision"] == st.revision
    assert got["routing_mode"]["value"] == "BETTING_MODE" and got["hedge_max_leverage"]["value"] == 4.5
    assert got["no_such_switch"]["errorCode"] == "FLAG_NOT_FOUND" and got["no_such_switch"]["value"] is False

"""The servers the workflow tests rely on start from the installed binaries (no download)."""

from datetime import timedelta

from temporalio import workflow


@workflow.defn(name="ProbeLock", sandboxed=False)
class ProbeLock:
    """Runs one activity (test_a_time_skipping_server_left_locked_is_detected)."""

    @workflow.run
    async def run(self) -> None:
        await workflow.execute_activity("probe.block", start_to_close_timeout=timedelta(hours=1))


async def test_time_skipping_server_starts(ts_env):
    assert ts_env.supports_time_skipping


async def test_dev_server_starts(dev_env):
    assert not dev_env.supports_time_skipping


# -- the Temporal client's TLS settings (a cluster; the dev server has no TLS to test against) ------------
def _settings(monkeypatch, **env):
    from core.settings import TemporalSettings

    for k in [k for k in __import__("os").environ if k.startswith("TEMPORAL_TLS") or k == "TEMPORAL_API_KEY"]:
        monkeypatch.delenv(k)
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    return TemporalSettings()


def test_temporal_tls_settings(monkeypatch, tmp_path):
    import pytest
    from temporalio.client import TLSConfig

    from core.temporal_client import tls_config

    ca, cert, key = (tmp_path / n for n in ("ca.pem", "cert.pem", "key.pem"))
    for f in (ca, cert, key):
        f.write_bytes(f"-----{f.stem}-----".encode())
    assert tls_config(_settings(monkeypatch)) is None  # loopback: plaintext; with an API key the SDK turns TLS on
    assert tls_config(_settings(monkeypatch, TEMPORAL_API_KEY="k")) is None
    assert tls_config(_settings(monkeypatch, TEMPORAL_TLS="true")) is True
    assert tls_config(_settings(monkeypatch, TEMPORAL_TLS="false")) is False
    t = tls_config(_settings(monkeypatch, TEMPORAL_TLS_CA_PATH=str(ca), TEMPORAL_TLS_SERVER_NAME="temporal.internal",
                             TEMPORAL_TLS_CERT_PATH=str(cert), TEMPORAL_TLS_KEY_PATH=str(key)))
    assert isinstance(t, TLSConfig) and (t.server_root_ca_cert, t.domain, t.client_cert, t.client_private_key) == (
        b"-----ca-----", "temporal.internal", b"-----cert-----", b"-----key-----")
    t = tls_config(_settings(monkeypatch, TEMPORAL_TLS_CERT=str(cert), TEMPORAL_TLS_KEY=str(key)))  # the short names
    assert t.client_cert == b"-----cert-----" and t.server_root_ca_cert is None
    with pytest.raises(ValueError, match="go together"):
        tls_config(_settings(monkeypatch, TEMPORAL_TLS_CERT_PATH=str(cert)))
    with pytest.raises(ValueError, match="contradicts"):
        tls_config(_settings(monkeypatch, TEMPORAL_TLS="false", TEMPORAL_TLS_CA_PATH=str(ca)))


# -- the shared time-skipping server is replaced when a test leaves it locked (tests/conftest.py) ---------
async def test_a_time_skipping_server_left_locked_is_detected():
    """Terminating a workflow while its activity runs leaks the test server's time-skipping lock: from then
    on workflow time passes in real time. The conftest probe must tell that server from a healthy one."""
    import asyncio
    import uuid

    from temporalio import activity
    from temporalio.worker import UnsandboxedWorkflowRunner, Worker

    from tests.conftest import _start_time_skipping, _time_skips

    started = asyncio.Event()

    @activity.defn(name="probe.block")
    async def block() -> None:
        started.set()
        await asyncio.Event().wait()

    env = await _start_time_skipping()
    try:
        assert await _time_skips(env)
        tq = f"tq-{uuid.uuid4()}"
        async with Worker(env.client, task_queue=tq, workflows=[ProbeLock], activities=[block],
                          workflow_runner=UnsandboxedWorkflowRunner()):
            h = await env.client.start_workflow(ProbeLock.run, id=f"probe-{uuid.uuid4()}", task_queue=tq)
            await asyncio.wait_for(started.wait(), 10)
            await h.terminate("mid-activity, as a timed-out test leaves it")
        assert not await _time_skips(env)
    finally:
        await asyncio.wait_for(env.shutdown(), 15)

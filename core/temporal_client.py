"""Temporal client from settings (TEMPORAL_ADDRESS, TEMPORAL_NAMESPACE, TLS / API key for a cluster)."""

from __future__ import annotations

import logging

from temporalio.client import Client, TLSConfig
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.runtime import LogForwardingConfig, LoggingConfig, Runtime, TelemetryConfig, TelemetryFilter

from core.settings import TemporalSettings

_RUNTIME: Runtime | None = None


def runtime(metrics_listen: str = "") -> Runtime:
    """The process's SDK runtime, its Rust core's logs forwarded to Python logging (`temporalio.core`).

    By default the core prints its own lines (e.g. `WARN temporalio_client::retry: gRPC call
    query_workflow retried 5 times`) straight to stdout, where they broke `--json` output. Forwarded,
    they go through structlog (core/log.py) to stderr, at the level the process logs at.

    `metrics_listen` (host:port, the first call only): the SDK's Prometheus exporter (core/metrics.py)."""
    global _RUNTIME
    if _RUNTIME is None:
        metrics = None
        if metrics_listen:  # the worker's and the monitor's; a CLI command does not pay for prometheus_client (~55 ms)
            from core.metrics import sdk_prometheus

            metrics = sdk_prometheus(metrics_listen)
        _RUNTIME = Runtime(telemetry=TelemetryConfig(logging=LoggingConfig(
            filter=TelemetryFilter(core_level="WARN", other_level="WARN"),
            forwarding=LogForwardingConfig(logger=logging.getLogger("temporalio.core"))),
            metrics=metrics))
        Runtime.set_default(_RUNTIME, error_if_already_set=False)
    return _RUNTIME


def tls_config(s: TemporalSettings) -> TLSConfig | bool | None:
    """TLS for the Temporal client: a TLSConfig when a certificate, CA or server name is set (mTLS needs
    cert and key together), TEMPORAL_TLS when given, else None: the SDK then turns TLS on exactly when an
    API key is set (Temporal Cloud), and off on loopback."""
    if bool(s.temporal_tls_cert) != bool(s.temporal_tls_key):
        raise ValueError("TEMPORAL_TLS_CERT_PATH and TEMPORAL_TLS_KEY_PATH go together (mTLS): set both or neither")
    if s.temporal_tls is False:
        if s.temporal_tls_cert or s.temporal_tls_ca:
            raise ValueError("TEMPORAL_TLS=false contradicts the TLS certificate settings")
        return False
    if s.temporal_tls_cert or s.temporal_tls_ca or s.temporal_tls_server_name:
        return TLSConfig(
            server_root_ca_cert=s.temporal_tls_ca.read_bytes() if s.temporal_tls_ca else None,
            domain=s.temporal_tls_server_name,
            client_cert=s.temporal_tls_cert.read_bytes() if s.temporal_tls_cert else None,
            client_private_key=s.temporal_tls_key.read_bytes() if s.temporal_tls_key else None,
        )
    return True if s.temporal_tls else None


class TemporalUnavailable(Exception):
    """Temporal did not answer the connection: nothing was sent (the CLI's exit 5)."""

    exit_code = 5


async def connect(s: TemporalSettings | None = None) -> Client:
    s = s or TemporalSettings()
    tls = tls_config(s)
    try:
        return await _connect(s, tls)
    except RuntimeError as e:  # the SDK's "Failed client connect: ..." (refused, DNS, TLS handshake)
        why = str(e).split("Os {")[0].replace("Failed client connect: ", "").strip(" (,")
        raise TemporalUnavailable(f"Temporal at {s.temporal_address} is unreachable ({why[:200]}): nothing was sent; "
                                  "is the server up? (`rollbackctl dev status`)") from None


async def _connect(s: TemporalSettings, tls) -> Client:
    return await Client.connect(
        s.temporal_address,
        namespace=s.temporal_namespace,
        data_converter=pydantic_data_converter,
        tls=tls,
        api_key=s.temporal_api_key.get_secret_value() if s.temporal_api_key else None,
        runtime=runtime(),
    )


async def run_histories(client: Client, wid: str, first_run_id: str) -> list:
    """Every run's history of workflow `wid`, from its first run, following continue-as-new."""
    out, run_id = [], first_run_id
    while run_id:
        hist = await client.get_workflow_handle(wid, run_id=run_id).fetch_history()
        out.append(hist)
        last = hist.events[-1]
        run_id = (last.workflow_execution_continued_as_new_event_attributes.new_execution_run_id
                  if last.HasField("workflow_execution_continued_as_new_event_attributes") else None)
    return out

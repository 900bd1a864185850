"""Temporal client from settings (TEMPORAL_ADDRESS, TEMPORAL_NAMESPACE, TLS / API key for a cluster)."""

from __future__ import annotations

from temporalio.client import Client, TLSConfig
from temporalio.contrib.pydantic import pydantic_data_converter

from rollbackctl.settings import TemporalSettings


async def connect(s: TemporalSettings | None = None) -> Client:
    s = s or TemporalSettings()
    tls: TLSConfig | bool = False
    if s.temporal_tls_cert and s.temporal_tls_key:
        tls = TLSConfig(client_cert=s.temporal_tls_cert.read_bytes(), client_private_key=s.temporal_tls_key.read_bytes())
    return await Client.connect(
        s.temporal_address,
        namespace=s.temporal_namespace,
        data_converter=pydantic_data_converter,
        tls=tls,
        api_key=s.temporal_api_key.get_secret_value() if s.temporal_api_key else None,
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

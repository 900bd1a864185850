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

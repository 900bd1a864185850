"""Settings from the environment.

Each command builds only the settings group it needs: `switch`, `init`, `operator` and `audit`
need etcd's alone, so a missing Temporal or trading-core setting never stops them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import AliasChoices, Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

DEFAULT_TASK_QUEUE = "rollbackctl"


class EtcdSettings(BaseSettings):
    """ROLLBACKCTL_ETCD_*: where the switch store lives."""

    model_config = SettingsConfigDict(env_prefix="ROLLBACKCTL_ETCD_", extra="ignore")

    endpoints: str = Field(
        default="127.0.0.1:2379",
        description="Comma-separated host:port list; tried in order, failing over on outage.",
    )
    prefix: str = "/perps/"
    username: str | None = None
    password: SecretStr | None = None
    ca_cert: Path | None = Field(default=None, description="CA bundle: enables TLS")
    cert: Path | None = Field(default=None, description="client certificate (mutual TLS)")
    key: Path | None = Field(default=None, description="client key (mutual TLS)")
    timeout_s: float = Field(default=5.0, gt=0, description="deadline of one etcd call")
    connect_timeout_s: float = Field(
        default=2.0, gt=0, description="a silent endpoint is given up after this; a refused one at once"
    )

    @field_validator("prefix")
    @classmethod
    def _prefix_shape(cls, v: str) -> str:
        if not v.startswith("/") or not v.endswith("/"):
            raise ValueError("ROLLBACKCTL_ETCD_PREFIX must start and end with '/', e.g. /perps/")
        return v

    def endpoint_list(self) -> list[str]:
        eps = [e.strip() for e in self.endpoints.split(",") if e.strip()]
        if not eps:
            raise ValueError("ROLLBACKCTL_ETCD_ENDPOINTS is empty")
        for ep in eps:
            host, sep, port = ep.rpartition(":")
            if not sep or not host or not port.isdigit():
                raise ValueError(f"ROLLBACKCTL_ETCD_ENDPOINTS: {ep!r} is not host:port")
        return eps


class TemporalSettings(BaseSettings):
    """TEMPORAL_* (the names the temporal CLI uses) and the task queue."""

    model_config = SettingsConfigDict(extra="ignore")

    temporal_address: str = "127.0.0.1:7233"
    temporal_namespace: str = "default"
    # The temporal CLI's names (TEMPORAL_TLS_*_PATH) and the short ones; any of them turns TLS on.
    temporal_tls: bool | None = None  # TEMPORAL_TLS: force TLS on/off (default: on when a cert, CA or API key is set)
    temporal_tls_cert: Path | None = Field(default=None, validation_alias=AliasChoices(
        "TEMPORAL_TLS_CERT_PATH", "TEMPORAL_TLS_CERT"))
    temporal_tls_key: Path | None = Field(default=None, validation_alias=AliasChoices(
        "TEMPORAL_TLS_KEY_PATH", "TEMPORAL_TLS_KEY"))
    temporal_tls_ca: Path | None = Field(default=None, validation_alias=AliasChoices(
        "TEMPORAL_TLS_CA_PATH", "TEMPORAL_TLS_CA"))
    temporal_tls_server_name: str | None = None
    temporal_api_key: SecretStr | None = None
    temporal_ui_url: str = Field(
        default="http://127.0.0.1:8233",
        validation_alias="ROLLBACKCTL_TEMPORAL_UI_URL",
    )
    task_queue: str = Field(default=DEFAULT_TASK_QUEUE, validation_alias="ROLLBACKCTL_TASK_QUEUE")
    # The critical lane's own task queue (manual/rollback.py CRITICAL_LANE); every worker serves both.
    critical_queue: str | None = Field(default=None, validation_alias="ROLLBACKCTL_CRITICAL_TASK_QUEUE")
    # Which queues a worker process serves: both, or one, to give the critical lane processes of its own.
    worker_lanes: Literal["both", "main", "critical"] = Field(default="both", validation_alias="ROLLBACKCTL_WORKER_LANES")

    @property
    def critical_task_queue(self) -> str:
        """Where critical-path rollbacks run: no backlog of other work ahead of them, worker slots of their own."""
        return self.critical_queue or f"{self.task_queue}-critical"

    def workflow_url(self, workflow_id: str) -> str:
        return f"{self.temporal_ui_url.rstrip('/')}/namespaces/{self.temporal_namespace}/workflows/{workflow_id}"


def critical_queue_of(task_queue: str) -> str:
    """The critical lane's queue beside `task_queue`: the configured one for the configured queue, else the
    default name (`<task queue>-critical`)."""
    s = TemporalSettings()
    return s.critical_task_queue if task_queue == s.task_queue else f"{task_queue}-critical"


def main_queue_of(task_queue: str) -> str:
    """The main queue a (critical lane's or main) queue belongs to: one pager and one budget per deployment.
    The inverse of `critical_queue_of`."""
    s = TemporalSettings()
    if task_queue == s.critical_task_queue:
        return s.task_queue
    base = task_queue.removesuffix("-critical")
    return base if base not in (task_queue, s.task_queue) else task_queue


class TradingCoreSettings(BaseSettings):
    """ROLLBACKCTL_TRADING_CORE_*: the exchange's trading core (or the simulator)."""

    model_config = SettingsConfigDict(env_prefix="ROLLBACKCTL_TRADING_CORE_", extra="ignore")

    url: str = "http://127.0.0.1:8700"
    token: SecretStr = SecretStr("dev-token")
    timeout_s: float = 2.0


class PagingSettings(BaseSettings):
    """ROLLBACKCTL_PAGERDUTY_* / ROLLBACKCTL_SLACK_*: where pages and chat messages go."""

    model_config = SettingsConfigDict(env_prefix="ROLLBACKCTL_", extra="ignore")

    pagerduty_url: SecretStr | None = None
    pagerduty_change_url: SecretStr | None = None  # default: ROLLBACKCTL_PAGERDUTY_URL's /v2/change/enqueue
    pagerduty_routing_key: SecretStr | None = None
    slack_webhook_url: SecretStr | None = None
    # One per escalation level (comma lists, level 1 first); see activities/paging.py.
    pagerduty_routing_keys: SecretStr | None = None
    slack_webhook_urls: SecretStr | None = None
    # Where a drill's pages and chat go (`rollbackctl drill`), when set: one entry for every level, or one
    # per level; unset, drills use the keys above (their pages still say [DRILL]).
    pagerduty_drill_routing_keys: SecretStr | None = None
    slack_drill_webhook_urls: SecretStr | None = None
    paging_timeout_s: float = Field(default=5.0, gt=0, le=60)
    # The pager's budgets (workflows/pager.py): PagerDuty's ~120 events/min per routing key and Slack's
    # ~1 message/s per webhook, as documented; lower them if other senders share the keys.
    pagerduty_events_per_min: int = Field(default=120, ge=1, le=10_000)
    slack_messages_per_s: float = Field(default=1.0, gt=0, le=100)
    # The PagerDuty v3 webhook receiver (`rollbackctl paging serve`): the subscription secret(s)
    # (comma list during a rotation) and where it listens.
    pagerduty_webhook_secret: SecretStr | None = None
    paging_listen: str = "127.0.0.1:8710"
    # A PagerDuty Change Event for every audited switch change (the worker keeps the relay running).
    pagerduty_change_events: bool = True
    # The operator console's URL (ROLLBACKCTL_CONSOLE_ORIGIN): a page or message that asks for a decision
    # links to that decision's page there. Empty: no links (no console is served).
    console_origin: str = ""


class SigningSettings(BaseSettings):
    """ROLLBACKCTL_SIGNING: signed requests and approvals, and the two-person rule (core/identity.py).

    On unless set `off`: the CLI signs every change and approval and sends switch changes to the
    worker; the worker refuses what is unsigned. `off` is for local drills only (loudly warned):
    the CLI then writes etcd itself, which production etcd credentials for operators do not allow.
    """

    model_config = SettingsConfigDict(env_prefix="ROLLBACKCTL_", extra="ignore")

    signing: bool = True
    # How long a two-person change (a request, a canary's start) waits for its second approval; unset:
    # the manual's (manual/approvals.APPROVAL_TIMEOUT, 15 minutes). See `approval_timeout()` in the CLI.
    approval_timeout_s: float | None = Field(default=None, gt=0)
    # How long after its submission a worker may still pick a change request up; later, it expires unapplied.
    change_pickup_s: float = Field(default=120.0, gt=0, le=3600)
    # How long the CLI waits for the worker's answer to a change request before it says "not confirmed yet".
    change_wait_s: float = Field(default=30.0, gt=0, le=3600)


class EmergencySettings(BaseSettings):
    """ROLLBACKCTL_EMERGENCY_*: the emergency lane (activities/emergency.py), for when Temporal is down.

    `listen`: where each worker serves it (host:port; empty: not served). Loopback by default; in a
    cluster, a private address reachable from the operators' hosts (the requests are signed and
    single-use; put TLS in front as for any internal service). `urls`: where the CLI sends an emergency
    move, comma-separated, tried in order (every worker that serves the lane).
    """

    model_config = SettingsConfigDict(env_prefix="ROLLBACKCTL_", extra="ignore")

    emergency_listen: str = "127.0.0.1:8720"
    emergency_urls: str = "http://127.0.0.1:8720"
    emergency_timeout_s: float = Field(default=3.0, gt=0, le=60)
    # How often a worker looks for emergency moves without a follow-up (two etcd range reads); 0: never.
    emergency_reconcile_s: float = Field(default=5.0, ge=0, le=3600)

    def url_list(self) -> list[str]:
        return [u.strip().rstrip("/") for u in self.emergency_urls.split(",") if u.strip()]


class MetricsSettings(BaseSettings):
    """ROLLBACKCTL_METRICS_* / ROLLBACKCTL_SDK_METRICS_LISTEN: Prometheus endpoints (core/metrics.py).

    `metrics_listen`: host:port of this process's domain `/metrics` (empty: none). Each long-running
    process (worker, `rollbackctl monitor`, `paging serve`, the simulator) reads it, so give each its own.
    `sdk_metrics_listen`: the Temporal SDK's own exporter in processes that run a Temporal worker.
    `metrics_collect_s`: how often the worker refreshes the workflow gauges (a visibility list and one
    query per running workflow) and `metrics_audit_verify_s` how often it verifies the audit chain;
    0 turns either off.
    """

    model_config = SettingsConfigDict(env_prefix="ROLLBACKCTL_", extra="ignore")

    metrics_listen: str = ""
    sdk_metrics_listen: str = ""
    metrics_collect_s: float = Field(default=10.0, ge=0, le=3600)
    metrics_audit_verify_s: float = Field(default=300.0, ge=0, le=86400)


class ConsoleSettings(BaseSettings):
    """ROLLBACKCTL_CONSOLE_*: the operator console (`rollbackctl console`).

    `origin` is the URL operators type into the browser (scheme://host[:port]); WebAuthn binds every
    passkey to its host (the relying party id), so it must stay the same once passkeys are registered,
    and a browser only offers passkeys to a secure context: https, or http://localhost (never an IP
    address). Default: http://localhost:<the listen port>.
    """

    model_config = SettingsConfigDict(env_prefix="ROLLBACKCTL_CONSOLE_", extra="ignore")

    listen: str = "127.0.0.1:8780"
    origin: str = ""
    session_hours: float = Field(default=8.0, gt=0, le=24 * 7, description="a session ends this long after sign-in")
    idle_minutes: float = Field(default=30.0, gt=0, le=24 * 60, description="... or after this long without a request")
    live_s: float = Field(default=1.0, ge=0.1, le=60, description="how often live views re-read what they show")
    rp_name: str = "rollbackctl"

    def hostport(self) -> tuple[str, int]:
        host, sep, port = self.listen.rpartition(":")
        if not sep or not port.isdigit():
            raise ValueError(f"ROLLBACKCTL_CONSOLE_LISTEN: {self.listen!r} is not host:port")
        return host or "127.0.0.1", int(port)

    def public_origin(self) -> str:
        return (self.origin or f"http://localhost:{self.hostport()[1]}").rstrip("/")

    def rp_id(self) -> str:
        from urllib.parse import urlparse

        host = urlparse(self.public_origin()).hostname
        if not host:
            raise ValueError(f"ROLLBACKCTL_CONSOLE_ORIGIN: {self.origin!r} is not a URL like https://console.example")
        return host


class OfrepSettings(BaseSettings):
    """ROLLBACKCTL_OFREP_*: the OpenFeature (OFREP) endpoint over the matrix (`rollbackctl ofrep serve`)."""

    model_config = SettingsConfigDict(env_prefix="ROLLBACKCTL_OFREP_", extra="ignore")

    listen: str = "127.0.0.1:8790"
    token: SecretStr | None = None  # the bearer token consumers send (required to serve)


SIGNING_OFF_WARNING = ("WARNING: ROLLBACKCTL_SIGNING=off: requests and approvals are NOT signed and the two-person "
                       "rule is OFF. For local drills only, never in production.")


class DevStackSettings(BaseSettings):
    """ROLLBACKCTL_DEV_*: ports and data dir of `rollbackctl dev up`."""

    model_config = SettingsConfigDict(env_prefix="ROLLBACKCTL_DEV_", extra="ignore")

    dir: Path = Path(".dev")
    etcd_peer_port: int = 2380
    temporal_ui_port: int = 8233
    sim_port: int = 8700
    emergency_port: int = 8720  # the worker's emergency lane
    # Prometheus endpoints: worker, worker SDK, monitor, monitor SDK, simulator, webhook receiver, console, OFREP
    # (this + 0..7)
    metrics: bool = True  # ROLLBACKCTL_DEV_METRICS=false: no /metrics anywhere in the stack
    metrics_port: int = 9464
    metrics_scrape_s: float = 5.0  # the scrape interval of the Prometheus config `dev up` writes
    console_port: int = 8780  # the operator console (http://localhost:PORT)
    ofrep_port: int = 8790  # the OFREP endpoint (token: dev-ofrep-token unless ROLLBACKCTL_OFREP_TOKEN)

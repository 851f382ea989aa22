"""Prometheus metrics. With several processes, prometheus_client's multiprocess mode aggregates them:
`serve --processes N` points PROMETHEUS_MULTIPROC_DIR at a fresh folder before this module is imported.
"""

from __future__ import annotations

import os

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)

from .core.transitions import unix_time

REQUESTS = Counter("otp_http_requests_total", "HTTP requests", ["handler", "method", "status"])
LATENCY = Histogram(
    "otp_http_request_duration_seconds",
    "HTTP request latency",
    ["handler"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
)
VERIFICATIONS = Counter("otp_verifications_total", "Code verifications by outcome", ["outcome", "reason"])
REGISTRATIONS = Counter("otp_registrations_total", "Device registrations", ["result"])
DEACTIVATIONS = Counter("otp_deactivations_total", "Device deactivations")
LOCKOUTS = Counter("otp_lockouts_total", "Devices locked after too many failures")
UNLOCKS = Counter("otp_unlocks_total", "Operator unlocks")
CONFIRMATIONS = Counter("otp_confirmations_total", "Pending enrolments' first codes, by result", ["result"])
ENROLLMENTS_EXPIRED = Counter("otp_enrollments_expired_total", "Pending enrolments not confirmed in time")
RESYNCS = Counter("otp_resyncs_total", "Resynchronisations with two consecutive codes, by result", ["result"])
AUDIT_LAST_VERIFIED = Gauge(
    "otp_audit_last_verified_timestamp_seconds",
    "When `audit verify` last found the audit trail intact",
    multiprocess_mode="max",
)
AUDIT_VERIFY_FAILURES = Gauge(
    "otp_audit_verification_failures",
    "Verifications of the audit trail that found it broken, ever",
    multiprocess_mode="max",
)
AUDIT_LAST_CHECKPOINT = Gauge(
    "otp_audit_last_checkpoint_timestamp_seconds",
    "When the audit chains' heads were last signed",
    multiprocess_mode="max",
)
AUDIT_CHECKPOINTS_MISSING = Counter(
    "otp_audit_checkpoints_missing_total", "Times a process found a checkpoint it had signed gone or altered"
)
RECOVERY_CODES = Counter("otp_recovery_codes_total", "Recovery codes issued, used, refused", ["result"])
RATE_LIMITED = Counter("otp_rate_limited_total", "Requests refused by the per-client rate limit", ["scope"])
RATE_LIMIT_FALLBACKS = Counter(
    "otp_rate_limit_store_errors_total", "Rate-limit checks the shared store (Redis) could not answer"
)
RATE_LIMIT_BREAKER_OPEN = Gauge(
    "otp_rate_limit_breaker_open",
    "Processes not calling the rate-limit store (Redis) after failed round trips in a row (circuit open)",
    multiprocess_mode="livesum",
)
RATE_LIMIT_BREAKER_OPENS = Counter(
    "otp_rate_limit_breaker_opens_total", "Times the rate limiter stopped calling Redis after failed round trips"
)
CLIENT_REQUESTS = Counter(
    "otp_client_requests_total",
    "Authenticated requests by API client (the label takes only the names of existing clients)",
    ["client"],
)
AUTH_FAILURES = Counter("otp_auth_failures_total", "Requests with a missing or wrong API key")
DB_POOL_IN_USE = Gauge(
    "otp_db_pool_connections_in_use", "Database connections checked out", multiprocess_mode="livesum"
)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)
APPLY_BATCH_SIZE = Histogram(
    "otp_apply_batch_size",
    "Device transitions (verifications, registrations, …) committed together in one statement (group commit)",
    buckets=BATCH_BUCKETS,
)
READ_BATCH_SIZE = Histogram(
    "otp_read_batch_size", "Uncached device states read together in one statement", buckets=BATCH_BUCKETS
)
OVERTAKEN = Counter(
    "otp_decisions_overtaken_total",
    "Decisions made again because another request or process had changed the device first",
    ["phase"],  # optimistic: decided again on the newer state; locked: settled under the row lock
)
WEBHOOK_DELIVERIES = Counter(
    "otp_webhook_deliveries_total",
    "Webhook delivery attempts by outcome (delivered, retry, failed: retries exhausted, gone: the receiver said 410,"
    " refused: its address is not public)",
    ["outcome"],
)
WEBHOOK_DELIVERY_SECONDS = Histogram(
    "otp_webhook_delivery_seconds",
    "Time from sending a webhook to the receiver's answer (or the timeout)",
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 15, 30, 60),
)
WEBHOOK_QUEUE_OLDEST = Gauge(
    "otp_webhook_queue_oldest_seconds",
    "Age of the oldest webhook delivery that is due and not yet taken (0: none waiting), read from the database "
    "by every worker's poll and at each scrape",
    multiprocess_mode="livemostrecent",
)
WEBHOOK_ENDPOINTS_DISABLED = Gauge(
    "otp_webhook_endpoints_disabled",
    "Webhook endpoints disabled (by a client, or because the receiver answered 410 Gone)",
    multiprocess_mode="livemostrecent",
)
DB_UNAVAILABLE = Counter("otp_database_unavailable_total", "Operations refused because the database was unreachable")


def exposition() -> tuple[bytes, str]:
    """The text format, aggregated over every live process in multiprocess mode."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        return generate_latest(registry), CONTENT_TYPE_LATEST
    return generate_latest(REGISTRY), CONTENT_TYPE_LATEST


def process_exited(pid: int) -> None:
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        multiprocess.mark_process_dead(pid)


def webhook_status(oldest_due_seconds: float, disabled_endpoints: int) -> None:
    """The webhook queue's state (`webhooks.queue.status`): set by each worker's poll and when scraped, so it is
    true with no worker in the scraped process (WEBHOOK_DELIVERY=false) — the case its alert is for."""
    WEBHOOK_QUEUE_OLDEST.set(oldest_due_seconds)
    WEBHOOK_ENDPOINTS_DISABLED.set(disabled_endpoints)


def audit_status(status: dict) -> None:
    """The audit trail's verification state, read from the database when scraped (any process may answer)."""
    for gauge, at in (
        (AUDIT_LAST_VERIFIED, status["last_verified"]),
        (AUDIT_LAST_CHECKPOINT, status["last_checkpoint"]),
    ):
        gauge.set(0 if at is None else unix_time(at))
    AUDIT_VERIFY_FAILURES.set(status["failed_verifications"] or 0)

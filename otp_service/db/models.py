"""The tables: devices, their audit trail and its chains and checkpoints, recovery codes, API clients, stored
reports.

The models are bound to a proxy so that the same code serves SQLite in development and
PostgreSQL in production; `database.open_database` decides which one at start-up.
The schema itself is owned by `migrations/`, not by these classes.
"""

from __future__ import annotations

from peewee import (
    AutoField,
    BigAutoField,
    BigIntegerField,
    BlobField,
    BooleanField,
    CharField,
    CompositeKey,
    DatabaseProxy,
    DateTimeField,
    IntegerField,
    Model,
    TextField,
)

db = DatabaseProxy()


class BaseModel(Model):
    class Meta:
        database = db
        legacy_table_names = False


class Tenant(BaseModel):
    """A namespace of users and devices (`core.tenants`), with its own policy over the service's settings."""

    id = AutoField()
    name = CharField(max_length=64, unique=True)
    created_at = DateTimeField()
    policy = TextField(null=True)  # JSON: {"OTP_WINDOW": "2", …}, as the environment would write them
    rate_limits = TextField(null=True)  # "verify=6000/minute …": what all the tenant's clients share

    class Meta:
        table_name = "tenants"


class Device(BaseModel):
    device_id = CharField(max_length=128)
    user_id = CharField(max_length=254, index=True)
    salt = CharField(max_length=64)  # hex of the derivation salt: not a secret without the master secret
    key_version = IntegerField()
    derived_key_hash = CharField(max_length=64)
    digits = IntegerField()
    interval = IntegerField()
    algorithm = CharField(max_length=8)
    issuer = CharField(max_length=64, null=True)
    is_active = BooleanField(default=True)
    created_at = DateTimeField()
    last_used = DateTimeField(null=True)
    usage_count = IntegerField(default=0)
    deactivated_at = DateTimeField(null=True)
    last_step = BigIntegerField(default=-1)  # RFC 6238 §5.2: the last time step accepted
    drift = IntegerField(default=0)  # observed clock offset of the device, in steps
    failed_attempts = IntegerField(default=0)
    locked_until = DateTimeField(null=True)
    version = BigIntegerField(default=0)  # +1 with every change: a write applies only to the version it was decided on
    pending_until = DateTimeField(null=True)  # an enrolment awaiting its first code, until this time
    tenant_id = IntegerField(default=1)  # a device id names a device within its tenant

    class Meta:
        table_name = "devices"
        primary_key = CompositeKey("tenant_id", "device_id")


class AuditLog(BaseModel):
    id = AutoField()
    timestamp = DateTimeField(index=True)
    action = CharField(max_length=32)
    success = BooleanField()
    reason = CharField(max_length=32, null=True)
    device_id = CharField(max_length=128, null=True)
    user_id = CharField(max_length=254, null=True)
    ip_address = CharField(max_length=64, null=True)
    user_agent = CharField(max_length=256, null=True)
    request_id = CharField(max_length=64, null=True)
    additional_data = TextField(null=True)  # JSON
    actor = CharField(max_length=64, null=True)  # the API client that asked (None: the service itself)
    # Tamper evidence (`integrity`, `journal`): the row's chain, its place in it, and its link hash; the
    # keyed digest of its personal fields and its subject's pseudonym, which an erasure leaves in place.
    chain = IntegerField(null=True)  # None: written before the chains existed
    seq = BigIntegerField(null=True)
    entry_hash = CharField(max_length=64, null=True)
    personal = CharField(max_length=64, null=True)
    subject = CharField(max_length=64, null=True)
    tenant_id = IntegerField(default=1)  # the tenant the request acted in (the chain covers it)

    class Meta:
        table_name = "audit_logs"


class AuditChain(BaseModel):
    """The head of one audit chain: how many rows it has had and the last one's hash."""

    chain = IntegerField(primary_key=True)
    seq = BigIntegerField(default=0)
    head = CharField(max_length=64)
    floor_seq = BigIntegerField(default=0)  # rows up to here were pruned…
    floor_hash = CharField(max_length=64)  # …and the chain goes on from this hash
    head_at = DateTimeField(null=True)  # the last row's time: the next row's is never earlier (`chain.clamp`)
    timed_from = BigIntegerField(default=0)  # rows up to here were written before times had to be monotonic

    class Meta:
        table_name = "audit_chains"


class AuditCheckpoint(BaseModel):
    """Every chain's head at a time, signed (Ed25519) by the signing key (at a rotation, by two)."""

    id = AutoField()
    created_at = DateTimeField(index=True)
    reason = CharField(max_length=16)
    payload = TextField()  # the signed JSON: time, reason, heads (and for a prune, what was removed)
    signatures = TextField()  # JSON: key id -> base64 signature

    class Meta:
        table_name = "audit_checkpoints"


class RecoveryCodes(BaseModel):
    """A user's set of one-time recovery codes: only keyed hashes (HMAC, `recovery.py`), each with the time
    it was used; and the set's own failure count and lock, like a device's."""

    user_id = CharField(max_length=254)
    codes = TextField()  # JSON: [[hash hex, used at ISO-8601 or null], …]
    key_version = IntegerField()
    created_at = DateTimeField()
    last_used = DateTimeField(null=True)
    failed_attempts = IntegerField(default=0)
    locked_until = DateTimeField(null=True)
    version = BigIntegerField(default=0)
    tenant_id = IntegerField(default=1)

    class Meta:
        table_name = "recovery_codes"
        primary_key = CompositeKey("tenant_id", "user_id")


class UserSpelling(BaseModel):
    """A spelling a user id was stored under before ids were normalised (migration 0011): audit rows keep
    the spelling they were written with (their digest covers it), so the reads and the erasure of a user
    look for these too. Filled once by the migration; emptied for a user by their erasure."""

    tenant_id = IntegerField()
    spelling = CharField(max_length=254)
    user_id = CharField(max_length=254)  # the normalised id

    class Meta:
        table_name = "user_spellings"
        primary_key = CompositeKey("tenant_id", "spelling")

    @classmethod
    def of(cls, tenant_id: int, user_id: str) -> list[str]:
        """`user_id` and every older spelling of it: what to match a user's rows with."""
        query = cls.select(cls.spelling).where((cls.tenant_id == tenant_id) & (cls.user_id == user_id))
        return [user_id, *sorted(s for (s,) in query.tuples())]


class ApiClient(BaseModel):
    """A caller of the API: its scopes and a digest of its key (the key itself is shown once, never kept)."""

    id = AutoField()
    name = CharField(max_length=64, unique=True)
    scopes = CharField(max_length=128)  # comma-separated, sorted
    key_digest = CharField(max_length=64, unique=True)  # SHA-256 hex of the key
    previous_key_digest = CharField(max_length=64, null=True, unique=True)  # the key before a rotation…
    previous_valid_until = DateTimeField(null=True)  # …and until when it still works
    created_at = DateTimeField()
    last_used_at = DateTimeField(null=True)
    expires_at = DateTimeField(null=True)
    revoked_at = DateTimeField(null=True)
    tenant_id = IntegerField(default=1)  # the tenant it acts in (with the `operator` scope, any, by X-Tenant)

    class Meta:
        table_name = "api_clients"


class Report(BaseModel):
    id = AutoField()
    kind = CharField(max_length=16)
    period_start = DateTimeField()
    period_end = DateTimeField()
    created_at = DateTimeField(index=True)
    html = TextField()
    data_zip = BlobField()
    pdf = BlobField(null=True)  # None: WeasyPrint could not run where the report was made
    subject = CharField(max_length=254, null=True)  # a per-user report's user id
    tenant_id = IntegerField(default=1)  # the tenant whose data it covers
    withdrawn_at = DateTimeField(null=True)  # its content removed by an erasure, until it is made again
    manifest = TextField(null=True)  # its files' SHA-256, signed (reports.manifest); None: made without keys
    manifest_signature = TextField(null=True)  # the manifest's raw Ed25519 signature, base64

    class Meta:
        table_name = "reports"


class WebhookEndpoint(BaseModel):
    """A receiver of a tenant's events (`webhooks`). Its signing secret is derived from the master secret
    (`webhooks.secrets`: HMAC of `salt` under the key of `key_version`), so the table holds no usable secret;
    during a rotation's grace period the previous salt still signs too."""

    id = AutoField()
    tenant_id = IntegerField()
    url = CharField(max_length=2048)
    description = CharField(max_length=256, null=True)
    event_types = TextField(null=True)  # comma-separated, sorted, with a leading and trailing comma; None: all
    salt = CharField(max_length=64)
    key_version = IntegerField()
    previous_salt = CharField(max_length=64, null=True)
    previous_key_version = IntegerField(null=True)
    previous_valid_until = DateTimeField(null=True)
    key_hash = CharField(max_length=64, null=True)  # SHA-256 of the signing key: a worker with another master secret
    previous_key_hash = CharField(max_length=64, null=True)  # would sign what no receiver verifies; it refuses
    created_at = DateTimeField()
    disabled_at = DateTimeField(null=True)  # None: receives events
    disabled_reason = CharField(max_length=32, null=True)  # DISABLED (by a client), GONE (the receiver said 410)

    class Meta:
        table_name = "webhook_endpoints"


class WebhookMessage(BaseModel):
    """An event of the catalogue (`webhooks.catalogue`), written in the transaction of its audit row (the
    outbox), only when an endpoint of its tenant takes it. The body is made from these columns at each attempt,
    so an erasure (which empties `user_id`) reaches messages still queued and any later replay."""

    id = BigAutoField()
    tenant_id = IntegerField()
    event_type = CharField(max_length=40)
    occurred_at = DateTimeField()
    device_id = CharField(max_length=128, null=True)
    user_id = CharField(max_length=254, null=True)
    subject = CharField(max_length=64, null=True)  # the user's pseudonym, as in the audit row
    actor = CharField(max_length=64, null=True)  # the API client
    request_id = CharField(max_length=64, null=True)
    reason = CharField(max_length=32, null=True)
    data = TextField(null=True)  # the audit row's additional data (JSON)

    class Meta:
        table_name = "webhook_messages"


class WebhookDelivery(BaseModel):
    """One message to one endpoint: the queue the delivery worker claims from (`webhooks.delivery`)."""

    id = BigAutoField()
    message_id = BigIntegerField()
    endpoint_id = IntegerField()
    status = CharField(max_length=16)  # pending, delivered, failed (retries exhausted), cancelled (endpoint off)
    attempts = IntegerField(default=0)
    next_attempt_at = DateTimeField(null=True)  # when pending: due from then (a claim moves it past its lease)
    last_attempt_at = DateTimeField(null=True)
    last_status = IntegerField(null=True)  # the receiver's HTTP status (None: no answer)
    last_error = CharField(max_length=256, null=True)
    delivered_at = DateTimeField(null=True)
    created_at = DateTimeField()

    class Meta:
        table_name = "webhook_deliveries"


ALL_MODELS = (
    Tenant,
    Device,
    AuditLog,
    Report,
    ApiClient,
    RecoveryCodes,
    AuditChain,
    AuditCheckpoint,
    WebhookEndpoint,
    WebhookMessage,
    WebhookDelivery,
)

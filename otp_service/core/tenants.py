"""Tenants: the namespaces that keep one application's users, devices, recovery codes, reports and audit rows
apart from another's (privacyIDEA's and Keycloak's realms, Twilio's services). Every API client belongs to
one; a device id or a user id means something only within its tenant, so no request can name — or learn of —
another tenant's data. Each tenant may set its own verification policy (digits, window, lockout …) over the
service's defaults.

Pure values: `service.tenants` reads them from the database and keeps them for a few seconds.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace

from .transitions import DEFAULT_TENANT
from .verification import Policy

__all__ = ["DEFAULT_TENANT", "DEFAULT_NAME", "NAME", "POLICY_VARIABLES", "Registration", "Tenant", "check_name"]

DEFAULT_NAME = "default"
NAME = re.compile(r"[a-z0-9][a-z0-9._-]{0,63}", re.ASCII)

# The settings a tenant may set for itself, by their environment variable (the same parsers check them).
POLICY_VARIABLES = (
    "OTP_DIGITS",
    "OTP_INTERVAL",
    "OTP_ALGORITHM",
    "OTP_WINDOW",
    "OTP_MAX_DRIFT",
    "OTP_MAX_FAILURES",
    "OTP_LOCKOUT_SECONDS",
    "OTP_HARD_LOCK_FAILURES",
    "OTP_RESYNC_WINDOW",
    "ENROLLMENT_CONFIRMATION",
)


def check_name(name: str) -> str:
    if not isinstance(name, str) or not NAME.fullmatch(name):
        raise ValueError("a tenant name is 1-64 of a-z 0-9 . _ - (starting with a letter or digit)")
    return name


@dataclass(frozen=True)
class Registration:
    """What a new device gets when the request does not say."""

    digits: int
    interval: int
    algorithm: str
    confirmation: str  # "optional" or "required"


@dataclass(frozen=True)
class Tenant:
    id: int
    name: str
    policy: Policy
    registration: Registration
    rate_limits: tuple[tuple[str, str], ...] = ()  # (client scope, rate) this tenant's requests share

    def with_overrides(self, values: dict) -> Tenant:
        """This tenant with `values` (parsed settings by field name, `otp_window` …) over its own."""
        policy = {
            "window": "otp_window",
            "max_drift": "otp_max_drift",
            "max_failures": "otp_max_failures",
            "lockout_seconds": "otp_lockout_seconds",
            "hard_lock_failures": "otp_hard_lock_failures",
            "resync_window": "otp_resync_window",
        }
        registration = {
            "digits": "otp_digits",
            "interval": "otp_interval",
            "algorithm": "otp_algorithm",
            "confirmation": "enrollment_confirmation",
        }
        return replace(
            self,
            policy=replace(self.policy, **{k: values[v] for k, v in policy.items() if v in values}),
            registration=replace(self.registration, **{k: values[v] for k, v in registration.items() if v in values}),
        )

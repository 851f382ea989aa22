"""The service: commands, reads and audit-trail operations over the database, blocking (`OtpService`) or
awaited by the HTTP handlers (`AsyncOtpService`), with no HTTP in them."""

from .blocking import OtpService, build_service
from .facade import AsyncOtpService

__all__ = ["AsyncOtpService", "OtpService", "build_service"]

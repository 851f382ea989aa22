"""otp-service: TOTP (RFC 6238) device registration and verification over HTTP."""

__version__ = "0.1.0"

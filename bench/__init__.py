"""Benchmarks for otp-service: `python -m bench --help`. Never run as timed tests."""

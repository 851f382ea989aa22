"""The TOTP engine in µs per call, beside pyotp and the bare HMAC floor (timeit, best of several repeats)."""

from __future__ import annotations

import base64
import hmac
import timeit

import pyotp

from otp_service.core import totp
from otp_service.core.verification import check_code

KEY = bytes(range(20))
NOW = 1_767_225_600.0


def _best(stmt, number: int = 20000, repeat: int = 7) -> float:
    return min(timeit.repeat(stmt, number=number, repeat=repeat)) / number * 1e6


def run() -> dict:
    step = totp.time_step(NOW)
    code = totp.totp(KEY, NOW)
    wrong = "000000" if code != "000000" else "111111"
    otp = pyotp.TOTP(base64.b32encode(KEY).decode())
    messages = [totp.counter_bytes(s) for s in (step - 1, step, step + 1)]

    def floor():
        for m in messages:
            hmac.digest(KEY, m, "sha1")

    def ours_wrong():
        check_code(
            KEY, wrong, NOW, digits=6, interval=30, algorithm="SHA1", last_step=-1, drift=0, window=1, max_drift=10
        )

    results = {
        "hmac_floor_3_steps_us": _best(floor),
        "ours_verify_window1_us": _best(ours_wrong),
        "ours_matching_steps_us": _best(lambda: totp.matching_steps(KEY, wrong, range(step - 1, step + 2))),
        "pyotp_verify_window1_us": _best(lambda: otp.verify(wrong, for_time=NOW, valid_window=1)),
        "ours_totp_us": _best(lambda: totp.totp(KEY, NOW)),
        "pyotp_at_us": _best(lambda: otp.at(NOW)),
    }
    results["ours_vs_pyotp"] = results["ours_verify_window1_us"] / results["pyotp_verify_window1_us"]
    results["ours_vs_floor"] = results["ours_verify_window1_us"] / results["hmac_floor_3_steps_us"]
    return results

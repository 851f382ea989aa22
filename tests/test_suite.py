"""The test suite's own promises: what it cannot run it says, and a configured server it cannot reach
stops it at once with one message (not an error per test)."""

import subprocess
import sys

from tests.serving import ROOT, cli_env, free_port


def test_an_unreachable_test_database_is_one_message_up_front(tmp_path):
    url = f"postgresql://postgres@127.0.0.1:{free_port()}/nowhere"
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(ROOT / "tests" / "core" / "test_totp.py")],
        cwd=tmp_path,
        env=cli_env(TEST_DATABASE_URL=url),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 3
    assert f"TEST_DATABASE_URL={url}: cannot connect" in result.stdout + result.stderr
    assert "passed" not in result.stdout and "error" not in result.stdout.lower().split("cannot connect")[0]


def test_what_is_not_configured_is_skipped_with_its_reason(tmp_path):
    env = {k: v for k, v in cli_env().items() if k not in ("TEST_DATABASE_URL", "REDIS_URL")}
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-rs",
            "-p",
            "no:cacheprovider",
            str(ROOT / "tests" / "persistence" / "test_eventloop.py"),
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout[-2000:]
    assert "needs TEST_DATABASE_URL" in result.stdout and " skipped" in result.stdout and "passed" not in result.stdout

"""What can be checked of the deployment here, without Docker or Render: the blueprint supplies every
setting production requires, its commands are real commands that run, and the image starts the
documented entry point."""

import base64
import os
import re
import secrets
import shlex
import signal

import pytest
import yaml

from otp_service.config import Settings
from otp_service.http.routes import ROUTES
from tests.serving import ROOT, free_port, http, run_cli, start_cli, wait_healthy

BLUEPRINT = yaml.safe_load((ROOT / "render.yaml").read_text())
DOCKERFILE = (ROOT / "Dockerfile").read_text()
SERVICES = {s["name"]: s for s in BLUEPRINT["services"]}
WEB = next(s for s in BLUEPRINT["services"] if s["type"] == "web")
CRONS = [s for s in BLUEPRINT["services"] if s["type"] == "cron"]


def blueprint_env(service: dict, database_url: str, redis_url: str = "redis://127.0.0.1:6379/15") -> dict[str, str]:
    """The environment Render would give `service`, with generated secrets made up the way Render makes them."""
    groups = {g["name"]: g["envVars"] for g in BLUEPRINT.get("envVarGroups", [])}
    entries = []
    for var in service.get("envVars", []):
        entries.extend(groups[var["fromGroup"]] if "fromGroup" in var else [var])
    env = {}
    for var in entries:
        if "value" in var:
            env[var["key"]] = str(var["value"])
        elif var.get("generateValue"):
            env[var["key"]] = base64.b64encode(secrets.token_bytes(32)).decode()
        elif "fromDatabase" in var:
            assert var["fromDatabase"]["name"] in {d["name"] for d in BLUEPRINT["databases"]}
            assert var["fromDatabase"]["property"] == "connectionString"
            env[var["key"]] = database_url
        elif "fromService" in var:
            ref = var["fromService"]
            assert ref["name"] in SERVICES and SERVICES[ref["name"]]["type"] == ref["type"]
            env[var["key"]] = redis_url
        else:
            raise AssertionError(f"{var['key']} has no value in the blueprint")
    return env


def dockerfile_cmd() -> list[str]:
    match = re.search(r"^CMD (\[.*\])$", DOCKERFILE, re.MULTILINE)
    return yaml.safe_load(match.group(1))


def test_blueprint_provides_every_production_setting(tmp_path):
    env = blueprint_env(WEB, f"sqlite:///{tmp_path}/x.db")
    settings = Settings.from_env(env)  # raises, naming the variable, if anything required is missing
    assert settings.production and not settings.generated and settings.redis_url
    assert settings.trusted_proxy_hops == 1
    for cron in CRONS:  # the report jobs get the same secrets through the shared group
        assert Settings.from_env(blueprint_env(cron, f"sqlite:///{tmp_path}/x.db")).production


def test_blueprint_shape():
    assert WEB["runtime"] == "docker" and WEB["dockerfilePath"] == "./Dockerfile"
    assert WEB["healthCheckPath"] in {r.path for r in ROUTES}
    kv = next(s for s in BLUEPRINT["services"] if s["type"] == "keyvalue")
    assert kv["ipAllowList"] == []
    assert {c["dockerCommand"].split()[3] for c in CRONS} == {"scheduled-report", "audit", "report"}
    for cron in CRONS:
        assert re.fullmatch(r"[\d*/,-]+( [\d*/,-]+){4}", cron["schedule"])


def test_dockerfile_builds_a_small_non_root_image_running_the_documented_entry_point():
    assert re.search(r"^FROM python:3\.11-slim", DOCKERFILE, re.MULTILINE)
    assert re.search(r"^USER (?!root)\w+", DOCKERFILE, re.MULTILINE)
    assert "HEALTHCHECK" in DOCKERFILE and "/health" in DOCKERFILE
    # Dependencies are installed before the code is copied, so code changes reuse the dependency layer.
    assert DOCKERFILE.index("pip install -r") < DOCKERFILE.index("COPY otp_service")
    assert "PIP_NO_CACHE_DIR=1" in DOCKERFILE
    assert dockerfile_cmd()[:4] == ["python", "-m", "otp_service", "serve"]
    readme = (ROOT / "README.md").read_text()
    assert "python -m otp_service serve" in readme
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert {".git", ".venv", "*.db", "reports", ".dev-secrets"} <= set(ignored)
    for copied in re.findall(r"^COPY (?!--from)(\S+)", DOCKERFILE, re.MULTILINE):
        assert (ROOT / copied).exists(), copied
    # The image's user can write where its default SQLite database lives (and nowhere in the code).
    default_db = re.search(r"DATABASE_URL=sqlite:///(/\S+)/[^/\s]+\.db", DOCKERFILE).group(1)
    owned = re.search(r"^RUN mkdir -p .*&& chown otp:otp (.+)$", DOCKERFILE, re.MULTILINE).group(1).split()
    assert default_db in owned and "/app" not in owned
    assert "docker build" in readme and "docker run" in readme and (ROOT / "LICENSE").read_text().startswith("MIT")


@pytest.mark.slow
def test_the_image_command_serves_with_the_blueprint_environment(tmp_path):
    port = free_port()
    env = blueprint_env(WEB, f"sqlite:///{tmp_path}/prod.db", redis_url=os.environ.get("REDIS_URL", ""))
    env.update(PORT=str(port), HOST="127.0.0.1")
    proc = start_cli(*dockerfile_cmd()[3:], cwd=tmp_path, **env)
    try:
        wait_healthy(port, proc)
        status, body = http(
            "POST",
            f"http://127.0.0.1:{port}/api/v1/devices/register",
            {"device_id": "D1", "user_id": "u"},
            {"Authorization": f"Bearer {env['API_KEY']}"},
        )
        assert status == 201
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=30)
    assert proc.returncode == 0


@pytest.mark.slow
def test_pre_deploy_and_cron_commands_run_against_the_test_database(service, db_url, tmp_path):
    from otp_service.db.models import Report

    service.register("CRON-1", "u")  # something for the reports to count
    service.checkpoint("periodic")  # what the web service's checkpoint task signs every few minutes
    commands = [WEB["preDeployCommand"]] + [c["dockerCommand"] for c in CRONS]
    env = blueprint_env(WEB, db_url)  # one deployment: the same secrets for every job
    env["MASTER_SECRET"] = service.settings.master_secret  # the one the rows were written with
    env["AUDIT_SIGNING_KEY"] = service.settings.audit_signing_key  # and their checkpoint signed with
    for command in commands:
        argv = shlex.split(command)
        assert argv[:3] == ["python", "-m", "otp_service"]
        result = (
            run_cli(*argv[3:], "--output-dir", str(tmp_path), cwd=tmp_path, timeout=300, **env)
            if ("report" in command)
            else run_cli(*argv[3:], cwd=tmp_path, **env)
        )
        assert result.returncode == 0, f"{command}: {result.stderr}"
    with service.database.connection_context():
        assert sorted(r.kind for r in Report.select()) == ["audit", "usage"]

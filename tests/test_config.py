"""Settings from the environment: defaults, every refusal, one clear message naming the variable."""

import re
from pathlib import Path

import pytest

from otp_service.config import VARIABLES, ConfigError, Settings, environment

GOOD_SECRET = "m" * 32


def parse(**env):
    return Settings.from_env(env)


def test_development_defaults_generate_secrets():
    s = parse()
    assert (s.environment, s.debug, s.otp_digits, s.otp_interval, s.otp_algorithm, s.otp_window) == (
        "development",
        False,
        6,
        30,
        "SHA1",
        1,
    )
    assert s.database_url.startswith("sqlite:///")
    assert (
        len(s.master_secret) >= 32
        and s.api_keys
        and set(s.generated) == {"MASTER_SECRET", "API_KEY", "AUDIT_SIGNING_KEY"}
    )
    assert (s.host, s.port, s.trusted_proxy_hops, s.redis_url) == ("127.0.0.1", 8000, 0, "")


def test_production_with_secrets():
    s = parse(
        ENVIRONMENT="production",
        MASTER_SECRET=GOOD_SECRET,
        API_KEY="k" * 20 + ", " + "j" * 20,
        MASTER_SECRETS_PREVIOUS="1:" + "o" * 32,
        MASTER_SECRET_VERSION="2",
        METRICS_TOKEN="t" * 32,
        AUDIT_SIGNING_KEY="A" * 43,
    )
    assert s.production and s.api_keys == ("k" * 20, "j" * 20) and not s.generated
    assert s.master_secrets == {1: "o" * 32, 2: GOOD_SECRET}


@pytest.mark.parametrize(
    "env,variable",
    [
        ({"ENVIRONMENT": "production", "API_KEY": "k" * 20}, "MASTER_SECRET"),
        ({"ENVIRONMENT": "production", "MASTER_SECRET": "short", "API_KEY": "k" * 20}, "MASTER_SECRET"),
        ({"ENVIRONMENT": "production", "MASTER_SECRET": GOOD_SECRET}, "API_KEY"),
        ({"ENVIRONMENT": "production", "MASTER_SECRET": GOOD_SECRET, "API_KEY": "short"}, "API_KEY"),
        ({"ENVIRONMENT": "production", "MASTER_SECRET": GOOD_SECRET, "API_KEY": "k" * 20}, "METRICS_TOKEN"),
        (
            {"ENVIRONMENT": "production", "MASTER_SECRET": GOOD_SECRET, "API_KEY": "k" * 40, "METRICS_TOKEN": "k" * 40},
            "METRICS_TOKEN",
        ),
        ({"ENVIRONMENT": "production", "MASTER_SECRET": GOOD_SECRET, "API_KEY": "k" * 20, "DEBUG": "true"}, "DEBUG"),
        ({"ENVIRONMENT": "staging"}, "ENVIRONMENT"),
        ({"MASTER_SECRET": "too-short"}, "MASTER_SECRET"),
        ({"OTP_DIGITS": "9"}, "OTP_DIGITS"),
        ({"OTP_DIGITS": "six"}, "OTP_DIGITS"),
        ({"OTP_INTERVAL": "5"}, "OTP_INTERVAL"),
        ({"OTP_ALGORITHM": "MD5"}, "OTP_ALGORITHM"),
        ({"OTP_WINDOW": "-1"}, "OTP_WINDOW"),
        ({"OTP_MAX_FAILURES": "0"}, "OTP_MAX_FAILURES"),
        ({"RATE_LIMIT_VERIFY": "lots"}, "RATE_LIMIT_VERIFY"),
        ({"RATE_LIMIT_DEFAULT": "10 per fortnight"}, "RATE_LIMIT_DEFAULT"),
        ({"RATE_LIMIT_ON_REDIS_ERROR": "maybe"}, "RATE_LIMIT_ON_REDIS_ERROR"),
        ({"REDIS_URL": "localhost:6379"}, "REDIS_URL"),
        ({"TRUSTED_PROXY_HOPS": "x"}, "TRUSTED_PROXY_HOPS"),
        ({"PORT": "70000"}, "PORT"),
        ({"DEBUG": "perhaps"}, "DEBUG"),
        ({"DATABASE_URL": "mysql://x"}, "DATABASE_URL"),
        ({"DATABASE_URL": "not a url"}, "DATABASE_URL"),
        ({"MASTER_SECRETS_PREVIOUS": "nope"}, "MASTER_SECRETS_PREVIOUS"),
        ({"MASTER_SECRETS_PREVIOUS": "1:short"}, "MASTER_SECRETS_PREVIOUS"),
        ({"MASTER_SECRET_VERSION": "2", "MASTER_SECRETS_PREVIOUS": "2:" + "o" * 32}, "MASTER_SECRETS_PREVIOUS"),
    ],
)
def test_bad_values_name_the_variable(env, variable):
    with pytest.raises(ConfigError) as exc:
        parse(**env)
    assert exc.value.variable == variable and str(exc.value).startswith(variable + ":")
    for secret in (env.get("MASTER_SECRET"), env.get("API_KEY")):
        if secret and len(secret) > 4:
            assert secret not in str(exc.value)


def test_environment_is_normalised_once_so_production_checks_cannot_be_skipped():
    """'production ' with a trailing space (or in capitals) is production: its secrets are required."""
    for spelling in ("production ", " Production", "PRODUCTION"):
        with pytest.raises(ConfigError) as exc:
            parse(ENVIRONMENT=spelling)
        assert exc.value.variable == "MASTER_SECRET"
    assert environment({"ENVIRONMENT": "production "}) == "production"


def test_every_variable_has_one_default_and_a_row_in_the_readme():
    """The table in config.py is the one place a variable is named, parsed and defaulted; the README's
    configuration table lists exactly those (and prometheus_client's own folder variable)."""
    defaults = parse()
    for variable in VARIABLES:
        default = variable.parse(variable.default)
        if (
            variable.name not in ("MASTER_SECRET", "API_KEY", "AUDIT_SIGNING_KEY") and default is not None
        ):  # generated; derived
            assert getattr(defaults, variable.field) == default, variable.name
    assert defaults.otp_hard_lock_failures == 10 * defaults.otp_max_failures
    readme = (Path(__file__).parent.parent / "README.md").read_text()
    table = readme.split("## Configuration", 1)[1].split("\n## ", 1)[0]
    documented = set(re.findall(r"^\| `([A-Z0-9_]+)`(?: / `([A-Z0-9_]+)`)?", table, re.M))
    names = {name for pair in documented for name in pair if name}
    assert names == {v.name for v in VARIABLES} | {"PROMETHEUS_MULTIPROC_DIR"}

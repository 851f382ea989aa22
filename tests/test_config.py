"""Settings from the environment: defaults, every refusal, one clear message naming the variable."""

import base64
import re
import secrets
from pathlib import Path

import pytest

from otp_service.config import VARIABLES, ConfigError, Settings, environment

GOOD_SECRET = secrets.token_urlsafe(32)  # production refuses a secret written down anywhere, this file included


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
    keys, previous = (secrets.token_urlsafe(16), secrets.token_hex(8)), secrets.token_hex(16)
    s = parse(
        ENVIRONMENT="production",
        MASTER_SECRET=GOOD_SECRET,
        API_KEY=f"{keys[0]}, {keys[1]}",
        MASTER_SECRETS_PREVIOUS=f"1:{previous}",
        MASTER_SECRET_VERSION="2",
        METRICS_TOKEN=secrets.token_urlsafe(32),
        AUDIT_SIGNING_KEY=base64.b64encode(secrets.token_bytes(32)).decode(),
    )
    assert s.production and s.api_keys == keys and not s.generated
    assert s.master_secrets == {1: previous, 2: GOOD_SECRET}


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


# -- production refuses published, guessable and reused secrets ------------------------------------------------

ROOT = Path(__file__).parent.parent
SEED = base64.b64encode(secrets.token_bytes(32)).decode()


def production(**env: str) -> dict[str, str]:
    """A production environment that starts, fresh secrets each run, with `env` in place of some."""
    fresh = {
        "ENVIRONMENT": "production",
        "MASTER_SECRET": secrets.token_urlsafe(32),
        "API_KEY": secrets.token_urlsafe(24),
        "METRICS_TOKEN": secrets.token_urlsafe(32),
        "AUDIT_SIGNING_KEY": base64.b64encode(secrets.token_bytes(32)).decode(),
    }
    return fresh | env


def refusal(env: dict[str, str], variable: str) -> str:
    """The one-line refusal of `env`, which names `variable` and repeats none of the secrets it was given."""
    with pytest.raises(ConfigError) as exc:
        Settings.from_env(env)
    message = str(exc.value)
    assert exc.value.variable == variable and message.startswith(f"{variable}: "), message
    written = [v for name, v in env.items() if name != "ENVIRONMENT"]
    for secret in {part.split(":")[-1].strip() for value in written for part in value.split(",")}:
        assert len(secret) < 8 or secret not in message, message
    return message


def literal_secrets() -> set[tuple[str, str]]:
    """Every secret this repository writes down — `API_KEY = "…"`, `"MASTER_SECRET": "…"`, `METRICS_TOKEN="…"`
    (tests, benchmarks, notebooks, demo data, README), and notebook 05's seed made with base64.b64encode(b"…") —
    as (the variable it would be, value)."""
    assignment = re.compile(
        r"([A-Z_]*(?:SECRET|KEY|TOKEN)[A-Z_]*)\\?[\"']?\s*[:=]\s*\\?[\"']([A-Za-z0-9+/=_.:-]{16,})\\?[\"']"
    )
    found = set()
    for path in [
        *ROOT.glob("*.md"),
        *ROOT.glob("*.yaml"),
        *(
            p
            for d in ("otp_service", "tests", "bench", "notebooks")
            for p in (ROOT / d).rglob("*")
            if p.suffix in (".py", ".ipynb")
        ),
    ]:
        text = path.read_text()
        for name, value in assignment.findall(text):
            variable = next(
                v
                for k, v in (
                    ("SIGN", "AUDIT_SIGNING_KEY"),
                    ("API", "API_KEY"),
                    ("TOKEN", "METRICS_TOKEN"),
                    ("SECRET", "MASTER_SECRET"),
                    ("KEY", "AUDIT_SIGNING_KEY"),
                )
                if k in name
            )
            found.add((variable, value))
        for raw in re.findall(r'b64encode\(b\\?"([^"\\]{32})\\?"\)', text):
            found.add(("AUDIT_SIGNING_KEY", base64.b64encode(raw.encode()).decode()))
    return found


def test_every_secret_written_in_the_repository_is_refused_in_production():
    """The demo data's (reports/demo.py), the tests', the benchmarks' and the notebooks' secrets are public: a
    production that copied one would run on a key anyone can read."""
    from otp_service.reports import demo

    found = literal_secrets()
    assert {("MASTER_SECRET", demo.DEMO_MASTER_SECRET), ("AUDIT_SIGNING_KEY", demo.DEMO_SIGNING_KEY)} <= found
    assert ("API_KEY", "demo-api-key-not-for-production") in found and len(found) >= 12, sorted(found)
    for variable, value in sorted(found):  # refused for what it is (or, shorter than allowed, before that)
        refusal(production(**{variable: value}), variable)


@pytest.mark.parametrize(
    "variable,value,problem",
    [
        ("MASTER_SECRET", "a" * 32, "one character repeated"),
        ("MASTER_SECRET", "abcd" * 8, "guessable"),
        ("MASTER_SECRET", "0123456789abcdef" * 2, "guessable"),
        ("MASTER_SECRET", "0123456789abcdefghijklmnopqrstuvwxyz", "guessable"),
        ("MASTER_SECRET", "".join(secrets.choice("xy") for _ in range(48)), "guessable"),  # too few distinct
        ("MASTER_SECRET", "changeme-changeme-changeme-changeme", "guessable"),
        ("MASTER_SECRETS_PREVIOUS", "0:" + "z" * 40, "version 0 is one character repeated"),
        ("API_KEY", "k" * 20, "key 1 of 1 is one character repeated"),
        ("API_KEY", secrets.token_urlsafe(24) + ",abababababababab", "key 2 of 2 looks guessable"),
        ("METRICS_TOKEN", "t" * 32, "one character repeated"),
        ("METRICS_TOKEN", "9876543210" * 4, "guessable"),
        ("AUDIT_SIGNING_KEY", "A" * 43, "one byte repeated (a constant seed)"),  # 32 zero bytes
        ("AUDIT_SIGNING_KEY", base64.b64encode(b"\x07" * 32).decode(), "one byte repeated"),
        ("AUDIT_SIGNING_KEY", base64.b64encode(bytes(range(32))).decode(), "guessable"),
        ("AUDIT_PREVIOUS_SIGNING_KEY", "old:" + "A" * 43, "key 'old' is one byte repeated"),
    ],
)
def test_production_refuses_guessable_secrets(variable, value, problem):
    assert problem in refusal(production(**{variable: value}), variable)


@pytest.mark.parametrize(
    "env,variable,problem",
    [
        ({"MASTER_SECRET": GOOD_SECRET, "METRICS_TOKEN": GOOD_SECRET}, "METRICS_TOKEN", "same value as MASTER_SECRET"),
        ({"MASTER_SECRET": GOOD_SECRET, "API_KEY": GOOD_SECRET}, "API_KEY", "key 1 of 1 is the same value as MASTER"),
        ({"MASTER_SECRET": SEED, "AUDIT_SIGNING_KEY": SEED}, "AUDIT_SIGNING_KEY", "same value as MASTER_SECRET"),
        (
            {"MASTER_SECRET": GOOD_SECRET, "MASTER_SECRET_VERSION": "2", "MASTER_SECRETS_PREVIOUS": f"1:{GOOD_SECRET}"},
            "MASTER_SECRETS_PREVIOUS",
            "version 1 is the same value as MASTER_SECRET",
        ),
        (
            {"MASTER_SECRET_VERSION": "3", "MASTER_SECRETS_PREVIOUS": f"1:{GOOD_SECRET},2:{GOOD_SECRET}"},
            "MASTER_SECRETS_PREVIOUS",
            "version 2 is the same value as MASTER_SECRETS_PREVIOUS (version 1)",
        ),
        (
            {"API_KEY": f"{GOOD_SECRET},{GOOD_SECRET}"},
            "API_KEY",
            "key 2 of 2 is the same value as API_KEY (key 1 of 2)",
        ),
        (  # the same seed written URL-safe and unpadded is the same seed
            {"AUDIT_SIGNING_KEY": SEED, "AUDIT_PREVIOUS_SIGNING_KEY": "old:" + SEED.rstrip("=").replace("+", "-")},
            "AUDIT_PREVIOUS_SIGNING_KEY",
            "key 'old' is the same value as AUDIT_SIGNING_KEY",
        ),
        ({"API_KEY": f"{GOOD_SECRET},{secrets.token_hex(16)}", "METRICS_TOKEN": GOOD_SECRET}, "METRICS_TOKEN", "API"),
    ],
)
def test_production_refuses_one_secret_in_two_places(env, variable, problem):
    assert problem in refusal(production(**env), variable)


def test_development_and_tests_keep_their_fixed_and_generated_secrets():
    """Only production refuses: tests and the demo data run on secrets written in the code, development on
    the ones it generates."""
    from otp_service.reports.demo import demo_settings

    assert not parse(ENVIRONMENT="test", MASTER_SECRET="a" * 32, API_KEY="k" * 20, METRICS_TOKEN="a" * 32).production
    assert demo_settings("sqlite:///demo.db").master_secret
    assert set(parse().generated) == {"MASTER_SECRET", "API_KEY", "AUDIT_SIGNING_KEY"}


def test_the_readmes_production_example_starts():
    """`docker run -e MASTER_SECRET="$(openssl rand -base64 32)" …`: what the README tells an operator to run."""
    readme = (ROOT / "README.md").read_text()
    written = set(re.findall(r'-e ([A-Z_]+)="\$\(openssl rand -base64 32\)"', readme))
    assert set(written) == {"MASTER_SECRET", "API_KEY", "METRICS_TOKEN", "AUDIT_SIGNING_KEY"}
    env = {name: base64.b64encode(secrets.token_bytes(32)).decode() for name in written}
    assert Settings.from_env(env | {"ENVIRONMENT": "production"}).production

"""Schema-driven fuzzing: schemathesis generates requests for every operation of the service's own
OpenAPI description (valid and invalid data). No answer may be a 5xx, every answer must conform to
the description, and none may carry a traceback or a secret. FUZZ_EXAMPLES sets the examples per
operation (CI: 25, a few hundred requests in all, the same ones each run); for a long, exploring run:
`FUZZ_EXAMPLES=500 FUZZ_RANDOM=1 pytest -m fuzz`."""

import os

import pytest
import schemathesis
from hypothesis import HealthCheck, settings

from otp_service.http.openapi import build_spec
from otp_service.http.routes import served
from tests.conftest import API_KEY, SEEN_RESPONSES, WEBHOOK_SECRET_ANSWERS
from tests.openapi_check import check_response

pytestmark = pytest.mark.fuzz
EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "25"))
schema = schemathesis.openapi.from_dict(build_spec(served(debug=False)))


@schema.parametrize()
@settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=list(HealthCheck),
    derandomize=not os.environ.get("FUZZ_RANDOM"),
)  # CI replays the same examples; FUZZ_RANDOM=1 explores
def test_every_operation_survives_generated_requests(case, api):
    response = case.call(
        base_url=f"http://127.0.0.1:{api.port}", headers={"Authorization": f"Bearer {API_KEY}"}, timeout=30
    )
    text = response.text
    assert response.status_code < 500, f"{case.method} {case.formatted_path}: {response.status_code} {text[:300]}"
    assert "Traceback" not in text and 'File "' not in text
    content_type = (response.headers.get("content-type") or [""])[0]  # schemathesis: lower-case names, lists
    body = response.json() if content_type.startswith("application/json") and text else {}
    check_response(case.method, case.formatted_path, response.status_code, content_type, body)
    # the responses allowed to carry a secret (a key; recovery codes; a webhook secret), like the test client's
    shows_secret = case.formatted_path.endswith(("/register", "/recovery-codes")) and response.status_code == 201
    shows_secret |= bool(WEBHOOK_SECRET_ANSWERS.match(case.formatted_path)) and response.status_code in (200, 201)
    if not shows_secret:
        SEEN_RESPONSES.append((case.formatted_path, text))  # scanned for secrets after the test

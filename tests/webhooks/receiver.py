"""A webhook receiver for the tests, run as its own process: `python -m tests.webhooks.receiver PORT`.

POST /<path>?plan=500,200 answers the n-th request for a webhook-id with the plan's n-th step (the last step
repeats): a status ("500", "410", "302" to /elsewhere), "429:SECONDS" (with Retry-After), or "sleep:SECONDS"
(then 200). Each request is checked with `standardwebhooks.Webhook(secret).verify` against every secret set for
its path (PUT /_secrets/<path> with a JSON list) and logged, at arrival and at answer; GET /_log returns the log.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from collections import Counter

import tornado.web
from standardwebhooks import Webhook
from standardwebhooks.webhooks import WebhookVerificationError

LOG: list[dict] = []
SECRETS: dict[str, list[str]] = {}
SEEN: Counter = Counter()


class Secrets(tornado.web.RequestHandler):
    def put(self, path: str) -> None:
        SECRETS["/" + path] = json.loads(self.request.body)
        self.write({"ok": True})


class Log(tornado.web.RequestHandler):
    def get(self) -> None:
        self.set_header("Content-Type", "application/json")
        self.write(json.dumps(LOG))


class Hook(tornado.web.RequestHandler):
    async def post(self, path: str) -> None:
        path = "/" + path
        headers = {k.lower(): v for k, v in self.request.headers.items()}
        ref = headers.get("webhook-id", "")
        n = SEEN[(path, ref)]
        SEEN[(path, ref)] += 1
        plan = (self.get_query_argument("plan", "200")).split(",")
        step = plan[min(n, len(plan) - 1)]
        verified = []
        for secret in SECRETS.get(path, []):
            try:
                Webhook(secret).verify(self.request.body, headers)
                verified.append(True)
            except WebhookVerificationError:
                verified.append(False)
        try:
            kind = json.loads(self.request.body)["type"]
        except (ValueError, KeyError):
            kind = None
        entry = {
            "path": path,
            "id": ref,
            "timestamp": headers.get("webhook-timestamp"),
            "signatures": len(headers.get("webhook-signature", "").split()),
            "type": kind,
            "verified": verified,
            "user_agent": headers.get("user-agent"),
            "content_type": headers.get("content-type"),
            "attempt": n + 1,
            "step": step,
            "arrived": time.time(),
            "answered": None,
        }
        LOG.append(entry)
        status, retry_after = 200, None
        if step.startswith("sleep:"):
            await asyncio.sleep(float(step.split(":")[1]))
        elif step.startswith("429:"):
            status, retry_after = 429, step.split(":")[1]
        else:
            status = int(step)
        entry["answered"] = time.time()
        self.set_status(status)
        if retry_after:
            self.set_header("Retry-After", retry_after)
        if 300 <= status < 400:
            self.set_header("Location", f"http://127.0.0.1:{self.request.host.split(':')[-1]}/elsewhere")
        self.finish(f"answer {status} from the test receiver")


async def main(port: int) -> None:
    app = tornado.web.Application([(r"/_secrets/(.*)", Secrets), (r"/_log", Log), (r"/(.*)", Hook)])
    app.listen(port, "127.0.0.1")
    await asyncio.Event().wait()


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1])))

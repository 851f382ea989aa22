"""Swagger UI at /docs (DEBUG only), its assets served from the swagger-ui-bundle package, never a CDN."""

from __future__ import annotations

import tornado.web
from swagger_ui_bundle import swagger_ui_path

PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>otp-service API</title>
<link rel="stylesheet" href="/docs/static/swagger-ui.css"></head>
<body><div id="swagger-ui"></div>
<script src="/docs/static/swagger-ui-bundle.js"></script>
<script>SwaggerUIBundle({url: "/openapi.json", dom_id: "#swagger-ui", persistAuthorization: false});</script>
</body></html>
"""


@tornado.web.stream_request_body  # never buffer a body sent to a page that takes none
class DocsHandler(tornado.web.RequestHandler):
    def data_received(self, chunk: bytes) -> None:
        pass

    def get(self) -> None:
        self.set_header("Content-Type", "text/html; charset=utf-8")
        self.finish(PAGE)


def routes() -> list:
    return [
        (r"/docs/?$", DocsHandler),
        (r"/docs/static/(.*)", tornado.web.StaticFileHandler, {"path": swagger_ui_path}),
    ]

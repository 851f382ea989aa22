"""The baseline: an empty Tornado POST handler that parses and returns a small JSON body, served the
same way as the service (N processes, each with its own SO_REUSEPORT socket). Every figure of the
suite is a ratio against this, measured in the same run."""

import asyncio
import json
import os
import signal
import sys

import tornado.web
from tornado.httpserver import HTTPServer
from tornado.netutil import bind_sockets


class Echo(tornado.web.RequestHandler):
    def post(self):
        body = json.loads(self.request.body)
        self.set_header("Content-Type", "application/json")
        self.finish(
            json.dumps({"success": True, "message": "ok", "data": {"device_id": body.get("device_id"), "valid": True}})
        )

    def get(self):
        self.finish(json.dumps({"success": True, "message": "ok", "data": {"status": "ok"}}))


async def serve(port: int) -> None:
    server = HTTPServer(tornado.web.Application([(r"/.*", Echo)], log_function=lambda h: None))
    server.add_sockets(bind_sockets(port, "127.0.0.1", reuse_port=True))
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    await stop.wait()


def main() -> None:
    port, processes = int(sys.argv[1]), int(sys.argv[2])
    children = []
    for _ in range(processes):
        pid = os.fork()
        if pid == 0:
            asyncio.run(serve(port))
            os._exit(0)
        children.append(pid)
    signal.signal(signal.SIGTERM, lambda *_: [os.kill(c, signal.SIGTERM) for c in children])
    for _ in children:
        os.wait()


if __name__ == "__main__":
    main()

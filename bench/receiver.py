"""A webhook receiver for the benchmark: answers every POST with 204 at once and counts them (GET /count)."""

import sys

import tornado.ioloop
import tornado.web

received = 0


class Hook(tornado.web.RequestHandler):
    def post(self, *_):
        global received
        received += 1
        self.set_status(204)

    def get(self, *_):
        self.write(str(received))


if __name__ == "__main__":
    tornado.web.Application([(r"/.*", Hook)]).listen(int(sys.argv[1]), "127.0.0.1")
    tornado.ioloop.IOLoop.current().start()

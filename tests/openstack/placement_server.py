#!/usr/bin/env python3
"""Serve the real OpenStack Placement WSGI application (openstack-placement from PyPI) on
loopback with the standard library's WSGI server, one request at a time (SQLite).

Usage: placement_server.py CONFIG_DIR HOST PORT   (CONFIG_DIR holds placement.conf)
"""
import os
import sys
from wsgiref.simple_server import WSGIRequestHandler, make_server


class QuietHandler(WSGIRequestHandler):
    def log_message(self, fmt, *args):  # one line per request on stderr, as a log
        sys.stderr.write("placement-http %s\n" % (fmt % args))


def main():
    conf_dir, host, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
    if not host.startswith("127.") and host != "::1":
        sys.exit("placement_server.py serves on loopback only")
    os.environ["OS_PLACEMENT_CONFIG_DIR"] = conf_dir
    from placement.wsgi import api  # noqa: E402  (reads the config at import)

    srv = make_server(host, port, api.application, handler_class=QuietHandler)
    print("placement listening on http://%s:%d" % (host, port), flush=True)
    srv.serve_forever()


if __name__ == "__main__":
    main()

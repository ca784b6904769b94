"""Upstream for the hallpass upstream-reading suite (tests/upstreams/run_suite.py).

A Flask (Werkzeug) app. It is served by the standard library's WSGI server (wsgiref), as
plain CGI/WSGI containers do: the CGI header mapping turns both `x-on-behalf-of` and
`x_on_behalf_of` into HTTP_X_ON_BEHALF_OF. (Werkzeug's own development server drops header
names with underscores; wsgiref, CGI and several WSGI containers do not.) Werkzeug upper-cases
the request method, so a `delete` that Envoy forwards from HTTP/2 is routed as DELETE.

    RECORD_FILE=... python app.py PORT      (or env PORT)
"""

import json
import os
import socketserver
import sys
import threading
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from flask import Flask, jsonify, request

app = Flask(__name__)
RECORD_FILE = os.environ.get("RECORD_FILE", "")
_lock = threading.Lock()


def record(effect):
    line = json.dumps(
        {
            "case": request.headers.get("x-case"),
            "upstream": "flask",
            "method": request.method,
            "raw_method": request.environ.get("REQUEST_METHOD"),
            "path": request.path,
            "effect": effect,
        }
    )
    with _lock, open(RECORD_FILE, "a", encoding="utf-8") as f:
        f.write(line + "\n")


@app.route("/items/<item>", methods=["GET", "DELETE"])
def items(item):
    if request.method == "DELETE":
        record({"deleted": item})
        return jsonify(deleted=item)
    record({"read": item})
    return jsonify(item=item)


@app.route("/users/<user>/messages", methods=["GET"])
def messages(user):
    # Delegation the way a "trusted" gateway header is often honoured: the proxy in front
    # is believed to strip X-On-Behalf-Of from clients, so when present it names the user.
    acting_for = request.headers.get("X-On-Behalf-Of") or user
    record({"acting_for": acting_for})
    return jsonify(acting_for=acting_for, messages=[])


class _Quiet(WSGIRequestHandler):
    def log_message(self, *args):  # keep the suite's output readable
        pass


class _ThreadingWSGIServer(socketserver.ThreadingMixIn, WSGIServer):
    daemon_threads = True


def main():
    port = int(sys.argv[1] if len(sys.argv) > 1 else os.environ.get("PORT", "0"))
    if not port or not RECORD_FILE:
        sys.exit("usage: RECORD_FILE=... python app.py PORT")
    httpd = make_server("127.0.0.1", port, app, server_class=_ThreadingWSGIServer, handler_class=_Quiet)
    print(f"flask upstream on {port}", flush=True)
    httpd.serve_forever()


if __name__ == "__main__":
    main()

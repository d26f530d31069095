"""A local stand-in for the few Hugging Face Hub HTTP endpoints an upload uses.

It answers on 127.0.0.1 only and keeps uploaded files in memory, so upload tests exercise
huggingface_hub's real HTTP path without the network. Every file is accepted as a "regular"
(inline, base64) upload, which the Hub protocol allows a server to ask for; any request it
does not know is answered 501 and recorded, so a test sees it.
"""
from __future__ import annotations

import base64
import json
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class HubStandIn:
    def __init__(self):
        self.repos: dict[str, dict[str, bytes]] = {}  # "repo@revision" -> {path: bytes}
        self.created: list[dict] = []
        self.unknown: list[str] = []
        self.auth: set[str] = set()
        standin = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def _json(self, status, payload, headers=None):
                body = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(body)

            def _body(self) -> bytes:
                return self.rfile.read(int(self.headers.get("Content-Length", 0)))

            def do_POST(self):
                standin.auth.add(self.headers.get("Authorization", ""))
                body = self._body()
                if self.path == "/api/repos/create":
                    payload = json.loads(body)
                    standin.created.append(payload)
                    repo = f"{payload['organization']}/{payload['name']}" if payload.get("organization") else payload["name"]
                    return self._json(200, {"url": f"{standin.url}/{repo}", "name": repo})
                if self.path == "/api/validate-yaml":  # model card metadata check
                    return self._json(200, {"errors": [], "warnings": []})
                m = re.fullmatch(r"/api/models/(.+?/.+?)/(preupload|commit|branch)/(.+)", self.path)
                if m and m.group(2) == "preupload":
                    files = json.loads(body)["files"]
                    return self._json(200, {"files": [{"path": f["path"], "uploadMode": "regular", "shouldIgnore": False} for f in files]})
                if m and m.group(2) == "commit":
                    target = standin.repos.setdefault(f"{m.group(1)}@{m.group(3)}", {})
                    for line in body.decode().splitlines():
                        item = json.loads(line)
                        if item["key"] == "file":
                            target[item["value"]["path"]] = base64.b64decode(item["value"]["content"])
                        elif item["key"] != "header":
                            standin.unknown.append(f"commit op {item['key']}")
                    return self._json(200, {"commitUrl": f"{standin.url}/{m.group(1)}/commit/{'0' * 40}", "commitOid": "0" * 40})
                if m and m.group(2) == "branch":
                    standin.repos.setdefault(f"{m.group(1)}@{m.group(3)}", {})
                    return self._json(200, {})
                standin.unknown.append(f"POST {self.path}")
                return self._json(501, {"error": "not in the stand-in"})

            def do_GET(self):
                if self.path == "/api/agent-harnesses":  # huggingface_hub's user-agent registry: optional
                    return self._json(404, {"error": "not in the stand-in"})
                m = re.fullmatch(r"/(.+?/.+?)/resolve/([^/]+)/(.+)", self.path)
                if m:  # nothing pre-exists on this hub
                    return self._json(404, {"error": "Entry not found"}, {"X-Error-Code": "EntryNotFound"})
                standin.unknown.append(f"GET {self.path}")
                return self._json(501, {"error": "not in the stand-in"})

            do_HEAD = do_GET

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()


class ErroringHub:
    """A Hub that answers every request with one HTTP error (429 rate limit, 5xx outage), for
    tests that a Hub failure is reported, never papered over. Records the paths asked for."""

    def __init__(self, status: int):
        self.requests: list[str] = []
        standin = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                standin.requests.append(self.path)
                body = json.dumps({"error": f"stand-in error {status}"}).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.send_header("Retry-After", "0")
                self.end_headers()
                self.wfile.write(body)

            do_HEAD = do_POST = do_GET

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()

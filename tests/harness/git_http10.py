"""Git smart HTTP the way the simplest servers answer it: `git http-backend` behind Python's
http.server, replying HTTP/1.0 with `Connection: close` and no Content-Length, so each reply ends
when the server closes the connection.

Usage: python3 git_http10.py PORT_FILE PROJECT_ROOT
Binds 127.0.0.1 on a free port, writes the port to PORT_FILE once listening, and logs one line per
request to stderr (`METHOD PATH`).
"""

import http.server
import os
import subprocess
import sys


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.0"

    def do_GET(self):
        self.backend(b"")

    def do_POST(self):
        length = int(self.headers.get("Content-Length") or 0)
        self.backend(self.rfile.read(length))

    def backend(self, body):
        path, _, query = self.path.partition("?")
        sys.stderr.write(f"{self.command} {path}\n")
        sys.stderr.flush()
        env = {
            "PATH": os.environ.get("PATH", ""),
            "GIT_CONFIG_NOSYSTEM": "1",
            "GIT_CONFIG_GLOBAL": "/dev/null",
            "GIT_PROJECT_ROOT": sys.argv[2],
            "GIT_HTTP_EXPORT_ALL": "1",
            "PATH_INFO": path,
            "QUERY_STRING": query,
            "REQUEST_METHOD": self.command,
            "CONTENT_TYPE": self.headers.get("Content-Type") or "",
            "CONTENT_LENGTH": str(len(body)),
            "REMOTE_ADDR": "127.0.0.1",
        }
        out = subprocess.run(
            ["git", "http-backend"], input=body, env=env, capture_output=True
        ).stdout
        head, _, rest = out.partition(b"\r\n\r\n")
        if not rest and b"\r\n\r\n" not in out:
            head, _, rest = out.partition(b"\n\n")
        status = 200
        headers = []
        for line in head.decode("latin-1").splitlines():
            name, _, value = line.partition(":")
            if name.lower() == "status":
                status = int(value.strip().split()[0])
            elif name.lower() != "content-length" and name:
                headers.append((name, value.strip()))
        self.send_response(status)
        for name, value in headers:
            self.send_header(name, value)
        self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(rest)

    def log_message(self, *args):
        pass


server = http.server.HTTPServer(("127.0.0.1", 0), Handler)
with open(sys.argv[1] + ".tmp", "w") as f:
    f.write(str(server.server_address[1]))
os.rename(sys.argv[1] + ".tmp", sys.argv[1])
server.serve_forever()

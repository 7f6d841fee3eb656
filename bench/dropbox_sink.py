"""The loopback Dropbox API test server for the benchmarks, run as its own process.

    python -m bench.dropbox_sink     # prints "READY {json}" once it listens

It is ``bg_ops_tests.fakes.dropbox_server.FakeDropboxServer`` (HTTPS on 127.0.0.1, a port the
kernel picks, its own self-signed certificate), the server the tests drive with the real
``dropbox`` SDK. The READY line carries what a client needs: port, certificate path and the
app credentials. Running it in its own process keeps its CPU (TLS, JSON, hashing every
upload) out of the benchmark's process.

Control over standard input, one command a line, one JSON line back:

- ``STATS <prefix>``: the files stored under the (lower-case) path prefix as
  ``{path_lower: [content_hash, size]}``, the ``files/upload`` requests for paths under it
  by HTTP status and by path (so a benchmark can check every file arrived exactly once),
  and the process's CPU seconds;
- ``DROP <prefix>``: forget the files and recorded requests under the prefix;
- ``QUIT``. The server also exits when its standard input closes (the benchmark died).
"""

from __future__ import annotations

import json
import os
import sys
from collections import Counter


def _upload_path(record) -> str:
    arg = record.arg if isinstance(record.arg, dict) else {}
    path = arg.get("path") or (arg.get("commit") or {}).get("path") or ""
    return str(path).lower()


def main() -> int:
    from bg_ops_tests.fakes.dropbox_server import FakeDropboxServer

    fake = FakeDropboxServer(host="127.0.0.1", port=0).start()
    ready = {"port": fake.port, "cert": fake.cert_path, "app_key": fake.app_key,
             "app_secret": fake.app_secret, "refresh_token": fake.refresh_token}
    print("READY " + json.dumps(ready), flush=True)
    try:
        for line in sys.stdin:
            command, _, arg = line.strip().partition(" ")
            prefix = arg.strip().lower()
            if command == "STATS":
                with fake._lock:
                    files = {k: [f.content_hash, f.size] for k, f in fake.files.items() if k.startswith(prefix)}
                    uploads = [(r.status, _upload_path(r)) for r in fake.requests
                               if r.endpoint in ("files/upload", "files/upload_session/finish")]
                mine = [(status, path) for status, path in uploads if path.startswith(prefix)]
                t = os.times()
                answer = {
                    "files": files,
                    "uploads_by_status": {str(k): v for k, v in Counter(s for s, _ in mine).items()},
                    "ok_uploads_by_path": dict(Counter(p for s, p in mine if s == 200)),
                    "cpu": round(t.user + t.system, 3),
                }
            elif command == "DROP":
                with fake._lock:
                    for key in [k for k in fake.files if k.startswith(prefix)]:
                        del fake.files[key]
                    fake.requests[:] = [r for r in fake.requests if not _upload_path(r).startswith(prefix)]
                answer = {"dropped": prefix}
            elif command == "QUIT":
                break
            else:
                answer = {"error": f"unknown command {command!r}"}
            print(json.dumps(answer), flush=True)
    finally:
        fake.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())

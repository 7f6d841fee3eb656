"""A minimal SMTP sink for the benchmarks, run as its own process.

    python -m bench.smtp_sink [--no-pipelining]   # prints "READY <port>" once it listens

aiosmtpd on the standard asyncio loop, on 127.0.0.1 and a port the kernel picks (we bind
the socket ourselves: ``Controller(port=0)`` does not work, ENVIRONMENT.md). It accepts
every message and only counts: messages, bytes, connections and distinct ``Message-ID``
headers (so a benchmark can check that every mail arrived exactly once). Running in its own
process keeps its CPU out of the benchmark's process.

Control, over SMTP itself: ``NOOP COUNT`` answers ``250 count=.. distinct=.. bytes=..
connections=.. cpu=..`` and ``NOOP RESET`` zeroes the counters. The sink exits on SIGTERM or
SIGINT, and when its standard input closes (the benchmark died), printing its last counts.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import socket
import sys

from aiosmtpd.smtp import SMTP

# Offer PIPELINING (RFC 2920) as production relays do; aiosmtpd reads pipelined commands in
# turn. ``--no-pipelining`` for a sink that does not offer it.
PIPELINING = "--no-pipelining" not in sys.argv[1:]

_MESSAGE_ID = re.compile(rb"^Message-ID:[ \t]*(<[^>\r\n]*>)", re.IGNORECASE | re.MULTILINE)


class CountingHandler:
    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.count = 0
        self.bytes = 0
        self.connections = 0
        self.ids: set[bytes] = set()

    def status(self) -> str:
        t = os.times()
        return (
            f"250 count={self.count} distinct={len(self.ids)} bytes={self.bytes} "
            f"connections={self.connections} cpu={t.user + t.system:.3f}"
        )

    async def handle_DATA(self, server, session, envelope):
        data = envelope.original_content or envelope.content or b""
        end = data.find(b"\r\n\r\n")
        match = _MESSAGE_ID.search(data, 0, end if end >= 0 else len(data))
        if match:
            self.ids.add(match.group(1))
        self.count += 1
        self.bytes += len(data)
        return "250 2.0.0 OK"

    async def handle_EHLO(self, server, session, envelope, hostname, responses):
        session.host_name = hostname
        if PIPELINING:
            responses.insert(-1, "250-PIPELINING")
        return responses

    async def handle_NOOP(self, server, session, envelope, arg):
        command = (arg or "").strip().upper()
        if command == "COUNT":
            return self.status()
        if command == "RESET":
            self.reset()
            return "250 reset"
        return "250 OK"


class CountingSMTP(SMTP):
    def __init__(self, handler: CountingHandler, **kwargs):
        super().__init__(handler, **kwargs)
        self._counter = handler

    def connection_made(self, transport) -> None:
        super().connection_made(transport)
        self._counter.connections += 1


def main() -> int:
    # IPPROTO_TCP named: asyncio sets TCP_NODELAY only on sockets whose proto says TCP, and
    # without it the second of two pipelined replies waits for the client's delayed ACK.
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    sock.listen(128)
    port = sock.getsockname()[1]

    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    handler = CountingHandler()

    def factory() -> SMTP:
        # hostname given: the default asks DNS for the FQDN, slow on some machines.
        return CountingSMTP(handler, hostname="bench-sink", enable_SMTPUTF8=True, data_size_limit=None, loop=loop)

    server = loop.run_until_complete(loop.create_server(factory, sock=sock))
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, loop.stop)

    def _stdin_closed() -> None:
        try:
            data = os.read(sys.stdin.fileno(), 4096)
        except OSError:
            data = b""
        if not data:
            loop.stop()

    try:
        loop.add_reader(sys.stdin.fileno(), _stdin_closed)
    except (OSError, ValueError):  # no usable stdin: rely on signals
        pass

    print(f"READY {port}", flush=True)
    try:
        loop.run_forever()
    finally:
        server.close()
        print(f"EXIT {handler.status()[4:]}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

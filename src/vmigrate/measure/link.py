"""What the link between two hosts really carries: a short TCP stream from one to the other.

Sockets keep the network namespace they were made in, so each end is created inside its host
and then driven from ordinary threads. The first quarter second is not counted: a token
bucket's burst would inflate the rate.
"""

from __future__ import annotations

import socket
import threading
import time

from vmigrate.testbed.netns import call_in_netns

PORT = 5299
WARMUP_S = 0.25
CHUNK = 64 * 1024


def _listener(port: int) -> socket.socket:
    server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    server.bind(("0.0.0.0", port))
    server.listen(1)
    return server


def _sender() -> socket.socket:
    return socket.socket(socket.AF_INET, socket.SOCK_STREAM)


def measure_link_bytes_s(
    from_netns: str, to_netns: str, to_ip: str, seconds: float = 1.5, port: int = PORT
) -> float:
    """Bytes per second a TCP stream from `from_netns` to `to_ip` (in `to_netns`) achieves."""
    server = call_in_netns(to_netns, _listener, port)
    client = call_in_netns(from_netns, _sender)
    received: list[tuple[float, int]] = []

    def receive() -> None:
        conn, _ = server.accept()
        with conn:
            total = 0
            while chunk := conn.recv(CHUNK):
                total += len(chunk)
                received.append((time.monotonic(), total))

    reader = threading.Thread(target=receive, daemon=True)
    reader.start()
    try:
        client.settimeout(5.0)
        client.connect((to_ip, port))
        payload = b"\0" * CHUNK
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            client.sendall(payload)
    finally:
        client.close()
        reader.join(timeout=5.0)
        server.close()
    if len(received) < 2:
        return 0.0
    start = received[0][0] + WARMUP_S
    counted = [(t, n) for t, n in received if t >= start] or received
    (t0, n0), (t1, n1) = counted[0], counted[-1]
    return (n1 - n0) / (t1 - t0) if t1 > t0 else 0.0

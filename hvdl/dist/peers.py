"""Which ranks are gone when Horovod shuts down, so that the message names the host that failed.

When a rank dies or its host drops off the network, the ranks left see only "Horovod has been
shut down", and horovodrun's Gloo launcher names the failed process by its index ("Process
name: 1"), not its host. So each rank of a multi-rank job listens on a TCP port of its own (a
thread accepts and closes every connection, as long as the process lives); the ports travel
with the inventory (hvdl/dist/__init__.py), and a rank whose collective fails tries every other
rank's port: a refused connection means that rank's process is gone, no answer within a few seconds
that its host is down or cut off. tests/test_multihost.py kills and cuts off hosts to check it.
"""

from __future__ import annotations

import socket
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any

PROBE_TIMEOUT_S = 3.0


class Beacon:
    """A listening socket on every interface that answers while this process lives."""

    def __init__(self) -> None:
        self._sock = socket.create_server(("", 0), backlog=64)
        self.port: int = self._sock.getsockname()[1]
        self._thread = threading.Thread(target=self._serve, name="hvdl-beacon", daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self._sock.accept()
            except OSError:  # closed
                return
            conn.close()

    def close(self) -> None:
        """Stop answering; the thread has ended when this returns (a close alone leaves a
        thread blocked in accept on Linux, there at interpreter exit)."""
        try:
            self._sock.shutdown(socket.SHUT_RDWR)  # wakes the accept
        except OSError:
            pass
        self._sock.close()
        self._thread.join(timeout=5)


def probe(host: str, port: int, timeout: float = PROBE_TIMEOUT_S) -> str | None:
    """None if the rank listening on host:port answers, else why not, in a few words."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return None
    except ConnectionRefusedError:
        return "its process is gone"
    except socket.gaierror:
        return f"'{host}' does not resolve here"
    except OSError:  # timed out, or no route
        return f"no answer from {host} within {timeout:.0f} s (down or cut off)"


def missing(inventory: list[dict[str, Any]], rank: int,
            timeout: float = PROBE_TIMEOUT_S) -> list[str]:
    """'rank R on HOST: why' for every other rank of `inventory` that does not answer."""
    others = [r for r in inventory if r["rank"] != rank and r.get("beacon_port")]
    if not others:
        return []
    with ThreadPoolExecutor(max_workers=min(32, len(others))) as pool:
        answers = list(pool.map(lambda r: probe(r["host"], r["beacon_port"], timeout), others))
    return [f"rank {r['rank']} on {r['host']}: {why}" for r, why in zip(others, answers) if why]

"""A quick reachability probe, so that an offline machine gets an error in seconds, not minutes.

Callers go through the module (``network.reachable(host)``), so one attribute replaces the probe.
"""

from __future__ import annotations

import socket
import threading

#: Seconds allowed to resolve and connect to a download host before calling it unreachable.
PROBE_TIMEOUT_S = 5.0


def reachable(host: str, port: int = 443, timeout: float | None = None) -> bool:
    """Whether a TCP connection to ``host`` opens within ``timeout`` seconds, DNS included.

    Runs in a daemon thread because name resolution ignores socket timeouts; a resolver that
    hangs therefore costs ``timeout`` seconds, not minutes.
    """
    timeout = PROBE_TIMEOUT_S if timeout is None else timeout
    result: list[bool] = []

    def probe() -> None:
        try:
            with socket.create_connection((host, port), timeout=timeout):
                result.append(True)
        except OSError:
            result.append(False)

    thread = threading.Thread(target=probe, name=f"posenc-probe-{host}", daemon=True)
    thread.start()
    thread.join(timeout)
    return bool(result and result[0])

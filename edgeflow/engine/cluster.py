"""Which peer a cluster member lost: the engine only says that a connection closed.

:class:`PeerWatch` runs beside a cluster member (``--addresses``). While the cluster forms
it reads this process's TCP connections from ``/proc`` (Linux) every 50 ms and matches each
to the peer it goes to (a connection this process opened goes to the peer's
``host:port``; one the peer opened comes from the peer's host, which names it when no other
peer shares that host). Once every peer is connected it waits in ``poll()`` for a peer to
close its side (``POLLRDHUP``: nothing is read from the engine's sockets); the first to do
so is :attr:`PeerWatch.lost`. Best effort: where it cannot tell (several peers on one host
connected to this one, no ``/proc``), ``lost`` stays None and the caller names every peer.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import select
import signal
import socket
import sys
import threading
from pathlib import Path

from edgeflow.connectors.connection_state import CONNECTIONS

_ESTABLISHED = "01"


def _address(hex_addr: str) -> tuple[str, int]:
    """``0100007F:1F90`` (``/proc/net/tcp``'s form: the address in host byte order) ->
    ``("127.0.0.1", 8080)``; IPv6 (and IPv4-mapped) likewise."""
    host, port = hex_addr.split(":")
    raw = bytes.fromhex(host)
    words = b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4))
    ip = ipaddress.ip_address(words)
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return str(ip), int(port, 16)


def _connections() -> dict[int, tuple[tuple[str, int], tuple[str, int], str]]:
    """This process's TCP sockets: file descriptor -> (local, remote, state)."""
    fds: dict[str, int] = {}  # socket inode -> fd
    with contextlib.suppress(OSError):
        for fd in os.listdir("/proc/self/fd"):
            with contextlib.suppress(OSError, ValueError):
                link = os.readlink(f"/proc/self/fd/{fd}")
                if link.startswith("socket:["):
                    fds[link[8:-1]] = int(fd)
    out = {}
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            for row in Path(table).read_text().splitlines()[1:]:
                f = row.split()
                if f[9] in fds:
                    out[fds[f[9]]] = (_address(f[1]), _address(f[2]), f[3])
    return out


def _resolve(host: str) -> str | None:
    with contextlib.suppress(OSError, UnicodeError):
        return str(ipaddress.ip_address(socket.gethostbyname(host.strip("[]"))))
    with contextlib.suppress(ValueError):
        return str(ipaddress.ip_address(host.strip("[]")))
    return None


class PeerWatch:
    """See the module docstring. ``lost``: the address of the first peer that closed its
    connection to this process, once seen."""

    def __init__(self, addresses: list[str], process_id: int) -> None:
        """Made in the main thread: it takes the signal wake-up descriptor (see
        :meth:`start`)."""
        self.addresses = addresses
        self.me = process_id
        self.lost: str | None = None
        self._stop = threading.Event()
        self._peers: list[tuple[int, str | None, int]] = []  # (index, ip, port)
        self._my_port = int(addresses[process_id].rpartition(":")[2])
        self._thread: threading.Thread | None = None
        self._wakeup: tuple[int, int] | None = None  # (read, write) of the signal pipe
        self._old_wakeup = -1
        #: every peer connected (the engine's cluster formed)
        self.formed = False

    def start(self) -> None:
        """Start watching. While the cluster forms, the engine does not run Python's signal
        handlers (they wait for the main thread), so the watch reads the signals itself from
        a wake-up pipe (:func:`signal.set_wakeup_fd`; only in the main thread)."""
        with contextlib.suppress(ValueError, OSError):
            read, write = os.pipe()
            os.set_blocking(read, False)
            os.set_blocking(write, False)
            try:
                self._old_wakeup = signal.set_wakeup_fd(write)
            except ValueError:  # not the main thread: signals are not watched
                os.close(read)
                os.close(write)
            else:
                self._wakeup = (read, write)
        self._thread = threading.Thread(target=self._run, name="edgeflow-peers", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop watching (in the thread that started it)."""
        self._stop.set()
        if self._wakeup is not None:
            with contextlib.suppress(ValueError):
                signal.set_wakeup_fd(self._old_wakeup)
            if self._thread is not None:
                self._thread.join(timeout=1.0)
            for fd in self._wakeup:
                with contextlib.suppress(OSError):
                    os.close(fd)
            self._wakeup = None

    def _stop_signalled(self) -> bool:
        if self._wakeup is None:
            return False
        try:
            got = os.read(self._wakeup[0], 64)
        except (BlockingIOError, OSError):
            return False
        return any(b in (signal.SIGTERM, signal.SIGINT) for b in got)

    def _peer_of(self, local: tuple[str, int], remote: tuple[str, int]) -> int | None:
        for j, ip, port in self._peers:
            if remote == (ip, port):  # we connected to it
                return j
        if local[1] != self._my_port:
            return None
        # it connected to us (peers with a higher id do): its host names it if unique
        from_host = [j for j, ip, _ in self._peers if ip == remote[0] and j > self.me]
        return from_host[0] if len(from_host) == 1 else None

    def _is_peer_link(self, local: tuple[str, int], remote: tuple[str, int]) -> bool:
        return local[1] == self._my_port or any(remote == (ip, p) for _, ip, p in self._peers)

    def _run(self) -> None:
        for j, a in enumerate(self.addresses):
            if j != self.me:
                host, _, port = a.rpartition(":")
                self._peers.append((j, _resolve(host), int(port)))
        links: dict[int, int | None] = {}  # fd -> peer index (None: cannot tell)
        while not self.formed:
            if self._stop.wait(0.05):
                return
            links = {
                fd: self._peer_of(local, remote)
                for fd, (local, remote, state) in _connections().items()
                if state == _ESTABLISHED and self._is_peer_link(local, remote)
            }
            self.formed = len(links) >= len(self._peers)
            if not self.formed and (CONNECTIONS.stop_requested() or self._stop_signalled()):
                self._stop_while_forming()
        watch = select.poll()
        for fd in links:
            watch.register(fd, select.POLLRDHUP)
        while not self._stop.is_set():
            events = watch.poll(100)
            if not events:
                continue
            # a peer's side closed (POLLRDHUP), or the engine already closed this side of
            # the connection after reading the end of it (POLLNVAL): either names the peer
            closed = {links.get(fd) for fd, _ in events}
            first = closed.pop()
            if first is not None and not closed:
                self.lost = self.addresses[first]
            return

    def _stop_while_forming(self) -> None:
        """A stop (SIGTERM, Ctrl-C) while the engine waits for peers to start: the engine
        would go on retrying (it does not look at signals then) and nothing has run yet
        that a snapshot could keep, so the process ends here with one line."""
        waiting = ", ".join(a for j, a in enumerate(self.addresses) if j != self.me)
        sys.stderr.write(
            f"stopped before the cluster formed: process {self.me} was still waiting for its "
            f"peers ({waiting}); nothing ran, nothing to resume\n"
        )
        sys.stderr.flush()
        os._exit(0)

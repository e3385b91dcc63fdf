"""Messages between the backend and a worker: one ``SOCK_SEQPACKET`` socket pair per worker.

A message is a dict of plain values (``marshal``), one datagram each; a forked child's end of its
new socket travels with the ``fork`` request as an ``SCM_RIGHTS`` descriptor.  When the backend
goes away, for any reason, every worker reads end-of-file and exits: nothing outlives a run.
"""

from __future__ import annotations

import array
import marshal
import socket
from typing import Any

MAX_MESSAGE = 1 << 16


def pair() -> tuple[socket.socket, socket.socket]:
    return socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)


def send(sock: socket.socket, message: dict[str, Any], fds: tuple[int, ...] = ()) -> None:
    data = marshal.dumps(message)
    if fds:
        socket.send_fds(sock, [data], list(fds))
    else:
        sock.send(data)


class Receiver:
    """Receives into one buffer allocated up front: a worker must not allocate (and free) 64 KiB
    per message, which would move its heap and so its own page tables and RSS."""

    def __init__(self) -> None:
        self._buffer = bytearray(MAX_MESSAGE)
        self._ancillary = socket.CMSG_SPACE(4 * array.array("i").itemsize)

    def recv(self, sock: socket.socket) -> tuple[dict[str, Any] | None, list[int]]:
        """The next message and any descriptors with it; (None, []) at end of file."""
        n, ancillary, _flags, _addr = sock.recvmsg_into([self._buffer], self._ancillary)
        fds = array.array("i")
        for level, kind, data in ancillary:
            if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                fds.frombytes(data[: len(data) - len(data) % fds.itemsize])
        if n == 0:
            return None, list(fds)
        return marshal.loads(memoryview(self._buffer)[:n]), list(fds)


def recv(sock: socket.socket) -> tuple[dict[str, Any] | None, list[int]]:
    """The next message and any descriptors with it; (None, []) at end of file."""
    data, fds, _flags, _addr = socket.recv_fds(sock, MAX_MESSAGE, 4)
    if not data:
        return None, []
    return marshal.loads(data), fds

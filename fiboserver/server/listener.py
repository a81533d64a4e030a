"""The shared listening socket: refusing new connections while queued ones stay.

The kernel completes TCP handshakes on a listening socket by itself and queues
the connections until someone calls accept(); closing the socket resets every
one still queued. To stop without losing any, the master attaches a filter
that drops new SYNs (new clients see a refused or timed-out connect, never a
reset) and the workers then accept what is queued before they close it.
"""

from __future__ import annotations

import ctypes
import socket
import struct

SO_ATTACH_FILTER = getattr(socket, "SO_ATTACH_FILTER", 26)
# Classic BPF, run on each packet for the listener with the TCP header at 0:
# drop a segment whose flags have SYN without ACK (a new connection), keep all else.
_DROP_NEW_CONNECTIONS = [
    (0x30, 0, 0, 13),  # ldb [13]           ; TCP flags
    (0x54, 0, 0, 0x12),  # and #(SYN|ACK)
    (0x15, 0, 1, 0x02),  # jeq #SYN, drop, keep
    (0x06, 0, 0, 0),  # drop: ret #0
    (0x06, 0, 0, 0xFFFFFFFF),  # keep: ret #-1
]


def refuse_new_connections(sock: socket.socket) -> None:
    """Make the kernel drop new SYNs for `sock` while queued connections stay.

    Raises OSError where the kernel refuses socket filters to this process
    (EPERM with unprivileged BPF disabled, in an unprivileged container).
    """
    code = b"".join(struct.pack("HBBI", *insn) for insn in _DROP_NEW_CONNECTIONS)
    program = ctypes.create_string_buffer(code)
    # struct sock_fprog { unsigned short len; struct sock_filter *filter; }
    fprog = struct.pack("HP", len(_DROP_NEW_CONNECTIONS), ctypes.addressof(program))
    sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_FILTER, fprog)

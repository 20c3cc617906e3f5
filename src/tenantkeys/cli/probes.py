"""What runs and what listens on this machine: processes by PID and group, ports by bind.

Process probes read ``/proc`` where there is one (Linux). Elsewhere they fall back to
``kill(pid, 0)``, which cannot tell a reused PID or a zombie from the process we started.
"""

from __future__ import annotations

import contextlib
import errno
import os
import socket
from pathlib import Path

_PROC = Path("/proc")
#: Whether this system has a Linux-style ``/proc`` (start times, states, process groups).
HAS_PROC = (_PROC / "self" / "stat").is_file()
#: ``/proc/<pid>/stat`` states of a process that has exited (zombie, dead).
_EXITED = frozenset("ZXx")


def _stat_fields(pid: int) -> list[str] | None:
    """The fields of ``/proc/<pid>/stat`` from the state on (field 3), None if it is gone."""
    try:
        text = (_PROC / str(pid) / "stat").read_text()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    # The command name (field 2) may hold spaces and parentheses: split after the last ')'.
    return text.rpartition(")")[2].split()


def start_time(pid: int) -> str | None:
    """When process ``pid`` started (clock ticks since boot), None if it is gone or exited.

    PID and start time together name one process: the kernel reuses PIDs, not both. Without
    ``/proc``, None always.
    """
    fields = _stat_fields(pid) if HAS_PROC else None
    if fields is None or fields[0] in _EXITED:
        return None
    return fields[19]  # field 22, starttime


def alive(pid: int) -> bool:
    """Whether process ``pid`` exists and has not exited (a zombie does not count)."""
    if HAS_PROC:
        return start_time(pid) is not None
    try:
        os.kill(pid, 0)  # signal 0: only checks that the process exists
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, owned by someone else
    return True


def group_alive(pgid: int) -> bool:
    """Whether a process of group ``pgid`` is still running (zombies do not count).

    Zombies matter: an orphan's zombie stays until its new parent reaps it, and some init
    processes (in containers) never do.
    """
    if not HAS_PROC:
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True
    for entry in _PROC.iterdir():
        if entry.name.isdigit():
            fields = _stat_fields(int(entry.name))
            if fields is not None and fields[2] == str(pgid) and fields[0] not in _EXITED:
                return True
    return False


def port_bound(host: str, port: int) -> bool:
    """Whether a server could not listen on ``host:port`` now (something else holds it).

    Probed by binding with SO_REUSEADDR, as servers bind: a port whose old connections linger
    in TIME_WAIT is free to them, a port with a listener is not.
    """
    try:
        addresses = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror:
        return False  # the server will report the address itself
    for family, kind, proto, _name, address in addresses:
        with socket.socket(family, kind, proto) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                with contextlib.suppress(OSError):
                    sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            try:
                sock.bind(address)
            except OSError as exc:
                if exc.errno == errno.EADDRINUSE:
                    return True
                # EADDRNOTAVAIL (e.g. ::1 without IPv6): nothing can listen there at all.
    return False

"""This process's TCP connections to a server, found by the server's address and port, and cut.

A stop uses it: shutting a connection down makes the server cancel its generation and wakes the
thread blocked reading the reply, which no timeout of the client's would do soon enough.
"""
from __future__ import annotations

import ipaddress
import socket
from urllib.parse import urlsplit

from components.llm.privacy import is_loopback


def cut(base_url: str | None) -> int:
    """Shut down this process's open connections to the server at ``base_url``; returns how many.
    A connection counts when its peer is the server's port on one of the server's addresses (any
    loopback address for a local server: ``0.0.0.0`` and ``localhost`` connect there)."""
    import psutil

    peer = _peer(base_url)
    if peer is None:
        return 0
    port, addresses = peer
    n = 0
    for conn in psutil.Process().net_connections(kind="tcp"):
        if not conn.raddr or conn.raddr.port != port or conn.fd < 0:
            continue
        if addresses is not None and not addresses(_ip(conn.raddr.ip)):
            continue
        try:
            with socket.fromfd(conn.fd, conn.family, socket.SOCK_STREAM) as dup:
                dup.shutdown(socket.SHUT_RDWR)  # acts on the connection, wakes the reader
            n += 1
        except OSError:
            pass
    return n


def _ip(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        ip = ipaddress.ip_address(text.split("%")[0])  # an IPv6 scope ("fe80::1%eth0") is not part of it
    except ValueError:
        return None
    if ip.version == 6 and ip.ipv4_mapped:  # a dual-stack socket's view of an IPv4 peer
        return ip.ipv4_mapped
    return ip


def _peer(base_url: str | None):
    """(port, test of a peer address) for connections to ``base_url``; the test is None when the
    host cannot be resolved now, and then the port alone decides: a stop that cuts a connection
    too many still stops, one that misses a reader waits for it."""
    if not base_url:
        return None
    url = urlsplit(base_url)
    port = url.port or {"http": 80, "https": 443}.get(url.scheme)
    if not port or not url.hostname:
        return None
    if is_loopback(base_url):
        return port, lambda ip: ip is not None and (ip.is_loopback or ip.is_unspecified)
    try:
        infos = socket.getaddrinfo(url.hostname, port, type=socket.SOCK_STREAM)
    except OSError:
        return port, None
    addresses = {_ip(info[4][0]) for info in infos}
    return port, lambda ip: ip in addresses

"""Test guard, active in any Python started with this folder on ``PYTHONPATH``: no network.

Every Python-level connection attempt (``socket.connect``/``connect_ex``/``sendto``, hence
``socket.create_connection``, http.client, urllib, requests, huggingface_hub) and every DNS lookup
(``socket.getaddrinfo``/``gethostbyname``) of a non-loopback host is appended to
``$NO_NETWORK_LOG`` (one line: what, where, and the caller) and fails with ``OSError``. The log
catches attempts that a library would swallow (e.g. a hub lookup falling back to the cache).

``NO_NETWORK_ALLOW_LOOPBACK=1`` lets 127.0.0.0/8, ::1, ``localhost`` and Unix sockets through
(torch.distributed's store and gloo talk over loopback in a multi-process run; their C++
sockets are not seen here anyway).
"""
import ipaddress
import os
import socket
import traceback

_LOG = os.environ.get("NO_NETWORK_LOG")
_ALLOW_LOOPBACK = os.environ.get("NO_NETWORK_ALLOW_LOOPBACK") == "1"


def _is_loopback(host):
    if host in ("localhost", "localhost.localdomain", "", None):
        return host is not None and host != ""
    try:
        return ipaddress.ip_address(str(host).split("%")[0]).is_loopback
    except ValueError:
        return False


def _refuse(what, where):
    caller = "".join(traceback.format_stack(limit=6)[:-2]).replace("\n", " | ")
    if _LOG:
        with open(_LOG, "a") as f:
            f.write(f"{what} {where!r} pid={os.getpid()} from: {caller}\n")
    raise OSError(f"network access disabled in this test: {what} {where!r}")


def _allowed(family, address):
    if family == getattr(socket, "AF_UNIX", None):
        return True
    host = address[0] if isinstance(address, tuple) else address
    return _ALLOW_LOOPBACK and _is_loopback(host)


_connect, _connect_ex, _sendto = socket.socket.connect, socket.socket.connect_ex, socket.socket.sendto
_getaddrinfo, _gethostbyname = socket.getaddrinfo, socket.gethostbyname


def connect(self, address):
    if not _allowed(self.family, address):
        _refuse("connect", address)
    return _connect(self, address)


def connect_ex(self, address):
    if not _allowed(self.family, address):
        _refuse("connect_ex", address)
    return _connect_ex(self, address)


def sendto(self, data, *args):
    address = args[-1]
    if not _allowed(self.family, address):
        _refuse("sendto", address)
    return _sendto(self, data, *args)


def getaddrinfo(host, *args, **kwargs):
    if not (_ALLOW_LOOPBACK and _is_loopback(host)):
        _refuse("getaddrinfo", host)
    return _getaddrinfo(host, *args, **kwargs)


def gethostbyname(host):
    if not (_ALLOW_LOOPBACK and _is_loopback(host)):
        _refuse("gethostbyname", host)
    return _gethostbyname(host)


socket.socket.connect = connect
socket.socket.connect_ex = connect_ex
socket.socket.sendto = sendto
socket.getaddrinfo = getaddrinfo
socket.gethostbyname = gethostbyname

"""Loaded by every Python subprocess the tests start (tests/conftest.py puts this folder on
PYTHONPATH): outbound sockets are refused, loopback allowed, the model hub is offline. So the CLI,
the demo and the llama.cpp server run in tests exactly as they would on a machine with no network."""

import os
import socket

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

_connect = socket.socket.connect
_connect_ex = socket.socket.connect_ex
_LOOPBACK = ("127.0.0.1", "::1", "localhost")


def _allowed(sock: socket.socket, address: object) -> bool:
    if sock.family not in (socket.AF_INET, socket.AF_INET6):
        return True  # unix sockets and the like
    return isinstance(address, tuple) and str(address[0]) in _LOOPBACK


def _guarded_connect(self: socket.socket, address: object) -> None:
    if not _allowed(self, address):
        raise OSError(f"network access in a test: connect to {address!r} refused")
    _connect(self, address)


def _guarded_connect_ex(self: socket.socket, address: object) -> int:
    if not _allowed(self, address):
        raise OSError(f"network access in a test: connect to {address!r} refused")
    return _connect_ex(self, address)


socket.socket.connect = _guarded_connect  # type: ignore[method-assign]
socket.socket.connect_ex = _guarded_connect_ex  # type: ignore[method-assign]

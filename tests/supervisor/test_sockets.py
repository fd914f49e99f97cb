"""Listening sockets: per-slot SO_REUSEPORT, the exclusivity probe, systemd activation."""

from __future__ import annotations

import os
import socket

import pytest

from fastgate import config as config_mod
from fastgate.errors import BindError
from fastgate.supervisor.sockets import bind_all, systemd_fds


def make_config(**options: object) -> config_mod.Config:
    return config_mod.build({"app": "x:y", "port": 0, **options})


def test_per_slot_listener_gives_each_slot_its_own_socket_on_one_port():
    (listener,) = bind_all(make_config(), per_slot=True, environ={})
    try:
        s0, s1, s2 = (listener.socket_for(i) for i in range(3))
        assert len({s0.fileno(), s1.fileno(), s2.fileno()}) == 3
        assert {s.getsockname() for s in (s0, s1, s2)} == {s0.getsockname()}
        assert listener.socket_for(1) is s1  # bound once
        assert all(s.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT) for s in (s0, s1, s2))
        # Connections reach the group: each lands in exactly one slot's queue.
        port = s0.getsockname()[1]
        clients = [socket.create_connection(("127.0.0.1", port), timeout=5) for _ in range(30)]
        accepted = 0
        for s in (s0, s1, s2):
            s.setblocking(False)
            while True:
                try:
                    conn, _ = s.accept()
                except BlockingIOError:
                    break
                conn.close()
                accepted += 1
        for c in clients:
            c.close()
        assert accepted == 30
        listener.release(2)
        assert s2.fileno() == -1
    finally:
        listener.close()
    assert s1.fileno() == -1 and s0.fileno() == -1


def test_shared_listener_without_per_slot_is_one_socket():
    (listener,) = bind_all(make_config(), environ={})
    try:
        assert listener.socket_for(3) is listener.sock
        assert not listener.sock.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT)
    finally:
        listener.close()


def test_probe_refuses_a_port_another_reuseport_server_holds():
    other = socket.socket()
    other.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    other.bind(("127.0.0.1", 0))
    other.listen()
    try:
        port = other.getsockname()[1]
        with pytest.raises(BindError, match="Address already in use"):
            bind_all(make_config(port=port), per_slot=True, environ={})
        # --reuse-port: sharing the port with another process is asked for explicitly.
        (listener,) = bind_all(make_config(port=port, reuse_port=True), per_slot=True, environ={})
        listener.close()
    finally:
        other.close()


def test_systemd_fds_only_when_listen_pid_is_us_and_consumed():
    env = {"LISTEN_PID": str(os.getpid()), "LISTEN_FDS": "2", "LISTEN_FDNAMES": "a:b"}
    assert systemd_fds(env) == [3, 4]
    assert env == {}
    assert systemd_fds({"LISTEN_PID": "1", "LISTEN_FDS": "1"}) == []
    assert systemd_fds({"LISTEN_PID": "x", "LISTEN_FDS": "1"}) == []
    assert systemd_fds({}) == []


def test_systemd_activation_replaces_the_default_bind_and_detects_the_family():
    inherited = socket.socket(socket.AF_INET6)
    inherited.bind(("::1", 0))
    inherited.listen()
    saved = os.dup(3) if _fd_open(3) else None
    try:
        os.dup2(inherited.fileno(), 3)
        env = {"LISTEN_PID": str(os.getpid()), "LISTEN_FDS": "1"}
        (listener,) = bind_all(make_config(), per_slot=True, environ=env)
        assert listener.kind == "fd" and listener.sock.family == socket.AF_INET6
        assert listener.display == f"http://[::1]:{inherited.getsockname()[1]}"
        assert listener.socket_for(1) is listener.sock  # cannot be multiplied
        listener.sock.detach()
    finally:
        if saved is not None:
            os.dup2(saved, 3)
            os.close(saved)
        else:
            os.close(3)
        inherited.close()


def _fd_open(fd: int) -> bool:
    try:
        os.fstat(fd)
    except OSError:
        return False
    return True

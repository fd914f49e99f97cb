"""The worker -> master pipe protocol and sd_notify."""

from __future__ import annotations

import fcntl
import os
import socket

from fastgate import ipc, notify


def test_decode_splits_bytes_into_messages_and_drops_noise():
    assert ipc.decode(b"RBBxDL") == [ipc.READY, ipc.BEAT, ipc.BEAT, ipc.DRAINING, ipc.RECYCLE]
    assert ipc.decode(b"") == []


def test_beat_interval_is_a_fraction_of_the_timeout_within_bounds():
    assert ipc.beat_interval_for(30.0) == 5.0
    assert ipc.beat_interval_for(2.0) == 0.5
    assert ipc.beat_interval_for(0.01) == 0.05


def test_pipe_reporter_writes_messages_and_notices_the_master_is_gone():
    r, w = os.pipe()
    gone: list[bool] = []
    reporter = ipc.PipeReporter(w, 1.0, on_master_gone=lambda: gone.append(True))
    reporter.ready()
    reporter.beat()
    reporter.draining()
    assert os.read(r, 10) == b"RBD"
    os.close(r)
    reporter.beat()
    reporter.beat()
    assert gone == [True]  # reported once
    os.close(w)


def test_recycle_is_repeated_with_every_beat_until_the_worker_exits():
    r, w = os.pipe()
    reporter = ipc.PipeReporter(w, 1.0)
    reporter.beat()
    reporter.recycle()
    reporter.beat()
    reporter.beat()
    assert ipc.decode(os.read(r, 10)) == [ipc.BEAT, ipc.RECYCLE, ipc.BEAT, ipc.RECYCLE, ipc.BEAT, ipc.RECYCLE]
    os.close(r)
    os.close(w)


def test_pipe_reporter_drops_a_beat_when_the_pipe_is_full():
    r, w = os.pipe()
    # One page of pipe buffer (the kernel's minimum) instead of the default 64 KiB: the same
    # overflow in a sixteenth of the beats (200,000 beats took 10 s under coverage).
    size = fcntl.fcntl(w, fcntl.F_SETPIPE_SZ, 4096)
    reporter = ipc.PipeReporter(w, 1.0)
    try:
        for _ in range(3 * size):  # far beyond the pipe buffer: never blocks, never raises
            reporter.beat()
        held = os.read(r, 2 * size)
        assert held == ipc.BEAT * size  # the buffer's worth; every beat after it was dropped
        reporter.beat()  # room again: the next beat gets through
        assert os.read(r, 2 * size) == ipc.BEAT
    finally:
        os.close(r)
        os.close(w)


def test_sd_notify_sends_datagrams_to_a_path_or_abstract_socket(tmp_path):
    assert notify.sd_notify("READY=1", environ={}) is False
    path = str(tmp_path / "n.sock")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(path)
        assert notify.sd_notify("STOPPING=1", environ={"NOTIFY_SOCKET": path})
        assert sock.recv(100) == b"STOPPING=1"
        assert notify.sd_notify("READY=1", environ={"NOTIFY_SOCKET": path})
        assert sock.recv(100) == f"READY=1\nMAINPID={os.getpid()}".encode()
    name = f"fastgate-test-{os.getpid()}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(b"\0" + name.encode())
        assert notify.sd_notify("RELOADING=1", environ={"NOTIFY_SOCKET": "@" + name})
        assert sock.recv(100).startswith(b"RELOADING=1\nMONOTONIC_USEC=")
    # Nobody listening: best effort, no exception.
    assert notify.sd_notify("READY=1", environ={"NOTIFY_SOCKET": str(tmp_path / "missing")}) is False

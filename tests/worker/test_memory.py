"""Worker malloc settings: applied on glibc, skipped when the user set their own."""

from __future__ import annotations

import os
import platform
import subprocess
import sys

import pytest

from tests.server import ROOT

glibc_only = pytest.mark.skipif(
    not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc", reason="glibc malloc only"
)

# Allocates and frees a 600 KiB block and reports where it came from, using glibc's
# mallinfo2(): `hblkhd` counts mmapped bytes, `arena` the heap, `fordblks` the heap's free
# bytes. Prints: applied, whether the block was mmapped, whether the heap still holds it
# after the free (as free bytes, the heap not trimmed). Deltas, not levels: how much the
# heap grows for the block depends on the free space the interpreter left at its top.
PROBE = """
import ctypes, sys
from fastgate.worker.memory import keep_heap

class MallInfo2(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in
                ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks",
                 "fordblks", "keepcost")]

libc = ctypes.CDLL(None)
libc.mallinfo2.restype = MallInfo2
libc.malloc.restype = ctypes.c_void_p
libc.free.argtypes = (ctypes.c_void_p,)
applied = keep_heap() if sys.argv[1] == "keep" else False
before = libc.mallinfo2()
block = libc.malloc(600 * 1024)
during = libc.mallinfo2()
mmapped = during.hblkhd - before.hblkhd >= 600 * 1024
libc.free(block)
after = libc.mallinfo2()
kept = after.fordblks - during.fordblks >= 600 * 1024 and after.arena == during.arena
print(applied, mmapped, kept)
"""


def probe(mode: str, **env: str) -> list[str]:
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    full_env.update(env, PYTHONPATH=str(ROOT))
    out = subprocess.run([sys.executable, "-c", PROBE, mode], env=full_env, capture_output=True, text=True,
                         timeout=30, check=True).stdout
    return out.split()


@glibc_only
def test_default_glibc_mmaps_a_600k_block_and_gives_it_back() -> None:
    # The baseline the setting changes (if this fails, glibc's defaults moved).
    assert probe("default") == ["False", "True", "False"]


@glibc_only
def test_keep_heap_serves_it_from_the_heap_and_keeps_it() -> None:
    assert probe("keep") == ["True", "False", "True"]


@glibc_only
@pytest.mark.parametrize(
    "env",
    [{"MALLOC_TRIM_THRESHOLD_": "131072"}, {"MALLOC_MMAP_THRESHOLD_": "131072"},
     {"GLIBC_TUNABLES": "glibc.malloc.trim_threshold=131072"}],
)
def test_the_users_own_malloc_settings_win(env: dict[str, str]) -> None:
    applied, _, kept = probe("keep", **env)
    assert applied == "False" and kept == "False"

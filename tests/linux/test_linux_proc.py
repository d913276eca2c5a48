"""The /proc readers of the Linux backend, on the test process itself."""
from __future__ import annotations

import ctypes
import mmap
import os

import pytest

from forkspec.oracle._internal import linux
from forkspec.oracle._internal import ptrace as pt
from forkspec.specs.abi import PAGE_SIZE
from forkspec.specs.trace import page_digest


@pytest.fixture
def region():
    pages = 64
    m = mmap.mmap(-1, pages * PAGE_SIZE, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    base = ctypes.addressof(ctypes.c_char.from_buffer(m))
    yield m, base, pages
    m.close()


def test_present_pages_are_exactly_the_touched_ones(region):
    m, base, pages = region
    touched = [0, 1, 2, 10, 63]
    for page in touched:
        m[page * PAGE_SIZE] = 1
    fd = os.open("/proc/self/pagemap", os.O_RDONLY)
    try:
        expected = [(base, base + 3 * PAGE_SIZE), (base + 10 * PAGE_SIZE, base + 11 * PAGE_SIZE),
                    (base + 63 * PAGE_SIZE, base + 64 * PAGE_SIZE)]
        assert linux._present_runs_by_entries(fd, base, base + pages * PAGE_SIZE) == expected
        try:
            scanned = pt.pagemap_scan(fd, base, base + pages * PAGE_SIZE)
        except OSError as exc:
            pytest.skip(f"no PAGEMAP_SCAN on this kernel: {exc}")
        assert scanned == expected
    finally:
        os.close(fd)


def test_read_view_of_self_has_the_written_page(region):
    m, base, _ = region
    m[5 * PAGE_SIZE:5 * PAGE_SIZE + 3] = b"abc"
    view = linux.read_view(os.getpid())
    page = bytearray(PAGE_SIZE)
    page[:3] = b"abc"
    assert dict(view.digests)[base + 5 * PAGE_SIZE] == page_digest(bytes(page))
    assert base + 6 * PAGE_SIZE not in dict(view.digests)
    assert any(lo <= base and base + 64 * PAGE_SIZE <= hi and rights == 3 for lo, hi, rights in view.ranges)


def test_parse_maps_and_coalesce():
    text = ("00400000-00401000 r-xp 00000000 fe:00 12 /tmp/i0\n"
            "00401000-00402000 -w-p 00001000 fe:00 12 /tmp/i0\n"
            "00402000-00403000 rw-p 00000000 00:00 0 \n"
            "7ffff7ff7000-7ffff7ffb000 r--p 00000000 00:00 0                          [vvar]\n")
    lines = linux.parse_maps(text)
    assert [(m.rights, m.inode, m.name) for m in lines] == [(5, 12, "/tmp/i0"), (3, 12, "/tmp/i0"),
                                                           (3, 0, ""), (1, 0, "[vvar]")]
    assert linux.coalesce([(m.start, m.end, m.rights) for m in lines]) == (
        (0x400000, 0x401000, 5), (0x401000, 0x403000, 3), (0x7FFFF7FF7000, 0x7FFFF7FFB000, 1))


def test_seccomp_filter_jumps_land_on_the_two_returns():
    code = pt.seccomp_filter({1, 9, 60}, 38)
    insns = [code[i:i + 8] for i in range(0, len(code), 8)]
    import struct
    decoded = [struct.unpack("<HBBI", i) for i in insns]
    deny, allow = len(decoded) - 2, len(decoded) - 1
    assert decoded[deny] == (0x06, 0, 0, pt.SECCOMP_RET_ERRNO | 38)
    assert decoded[allow] == (0x06, 0, 0, pt.SECCOMP_RET_ALLOW)
    for pc, (op, jt, jf, k) in enumerate(decoded):
        if op in (0x15, 0x35):
            targets = {pc + 1 + jt, pc + 1 + jf}
            assert targets <= set(range(pc + 1, len(decoded)))
            if op == 0x15 and k in (1, 9, 60):
                assert pc + 1 + jt == allow

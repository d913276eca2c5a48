"""Names of ABI numbers: one place, used by the checker's reports and by `forkspec run --trace`."""
from __future__ import annotations

import pytest

from forkspec.oracle._internal.tracefmt import format_event
from forkspec.specs.abi import SiCode, Signal, si_code_name, signal_name
from forkspec.specs.trace import Signal as SignalEvent


@pytest.mark.parametrize("signo,code,name", [
    (Signal.SIGSEGV, SiCode.SEGV_MAPERR, "SEGV_MAPERR"),
    (Signal.SIGSEGV, SiCode.SEGV_ACCERR, "SEGV_ACCERR"),
    (Signal.SIGBUS, SiCode.BUS_ADRERR, "BUS_ADRERR"),        # 2 means something else for SIGBUS
    (Signal.SIGSEGV, SiCode.SI_KERNEL, "SI_KERNEL"),
    (Signal.SIGSEGV, 9, "9"),
])
def test_si_code_names_depend_on_the_signal(signo, code, name) -> None:
    assert si_code_name(signo, code) == name


def test_signal_names_and_trace_text() -> None:
    assert signal_name(11) == "SIGSEGV" and signal_name(63) == "63"
    text = format_event(SignalEvent(pid=3, signo=Signal.SIGBUS, si_code=SiCode.BUS_ADRERR, si_addr=0x5000))
    assert text == "[3] --- SIGBUS {si_code=BUS_ADRERR, si_addr=0x5000} ---"

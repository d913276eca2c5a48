import pytest

from forkspec.oracle._internal.linux import LinuxBackend


@pytest.fixture(scope="session")
def backend():
    ok, why = LinuxBackend.available()
    if not ok:
        pytest.skip(f"the Linux backend cannot run here: {why}")
    be = LinuxBackend()
    yield be
    be.close()

import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import reference  # noqa: E402


def pytest_configure(config):
    config.addinivalue_line(
        "markers",
        "host_only(reason): the test needs this machine's own build or tools (the library through ctypes or "
        "the Python package, the conformance program, x86 tools, the fuzzers); skipped when WIDEN drives a "
        "foreign CLI (the aarch64 build under qemu), which runs every other test end to end")


def pytest_collection_modifyitems(config, items):
    if not reference.FOREIGN:
        return
    for item in items:
        mark = item.get_closest_marker("host_only")
        if mark is not None:
            why = mark.args[0] if mark.args else mark.kwargs.get("reason", "")
            item.add_marker(pytest.mark.skip(reason=f"host only ({reference.WIDEN} is foreign): {why}"))


def pytest_report_header(config):
    if reference.FOREIGN:
        return [f"widen: driving {reference.WIDEN} (foreign; host_only tests skipped, sizes x {reference.SCALE:g})"]
    return []

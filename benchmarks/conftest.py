"""Shared by the pytest-benchmark suites in benchmarks/: a closing table in ns per path-step."""

from __future__ import annotations

import pytest

_ROWS: list[dict] = []


@pytest.fixture(scope="session")
def throughput_rows():
    """Rows for the closing table; each test appends one dict (see test_throughput.py)."""
    return _ROWS


def pytest_terminal_summary(terminalreporter):
    if not _ROWS:
        return
    tr = terminalreporter
    tr.section("throughput in ns per path-step (wall time / (paths x steps), min and median over the rounds)")
    tr.write_line(f"{'backend':<8} {'problem':<18} {'method':<11} {'paths x steps':>15} {'evals/step':>10} "
                  f"{'min':>9} {'median':>9}")
    for r in sorted(_ROWS, key=lambda r: (r["problem"], r["method"], r["backend"])):
        tr.write_line(f"{r['backend']:<8} {r['problem']:<18} {r['method']:<11} {r['size']:>15} "
                      f"{r['evals_per_step']:>10.1f} {r['ns_min']:>9.2f} {r['ns_median']:>9.2f}")

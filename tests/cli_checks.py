"""Shared assertions of the command-line tests."""


def one_line_error(r, *needles):
    """Exit status 2 and one error line (after argparse's usage, for a malformed option), no traceback."""
    assert r.returncode == 2, (r.returncode, r.stdout, r.stderr)
    lines = r.stderr.strip().splitlines()
    assert "Traceback" not in r.stderr and (len(lines) == 1 or lines[0].startswith("usage:")), r.stderr
    for n in needles:
        assert n in lines[-1], r.stderr

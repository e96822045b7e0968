"""The command line runs end to end and writes its plot."""

import os
import subprocess
import sys

import pytest


@pytest.mark.slow  # the README's main job end to end (about a minute with a warm cache): every part, every plot
def test_demo_quick_writes_its_plots(tmp_path):
    r = subprocess.run([sys.executable, "-m", "sdekit", "demo", "--quick", "--out", str(tmp_path)],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    assert "order" in r.stdout and "ns per path-step" in r.stdout
    # compilation is reported apart from the timings: per study, per throughput method, per sampler
    assert r.stdout.count("first calls (compile and set-up, not in the times above): euler ") == 2
    assert "first call s" in r.stdout and "first s" in r.stdout and r.stdout.count(", first call ") == 2
    assert "sliced KS" in r.stdout and "log-likelihood" in r.stdout
    assert "diffusion training demo" in r.stdout and "sliced W1 / floor" in r.stdout
    for name in ("convergence_ou", "convergence_gbm", "work_precision_ou", "work_precision_gbm", "samples_oracle",
                 "sampler_errors", "moons_sra1", "moons_dpmpp_2m", "moons_run/losses"):
        png = tmp_path / f"{name}.png"
        assert png.exists() and png.stat().st_size > 10_000
        with open(png, "rb") as fh:
            assert fh.read(8) == b"\x89PNG\r\n\x1a\n"


def test_help_lists_the_verbs():
    r = subprocess.run([sys.executable, "-m", "sdekit", "--help"], capture_output=True, text=True, check=True,
                       env=dict(os.environ))
    assert "demo" in r.stdout and "converge" in r.stdout


def test_demo_refuses_an_unwritable_out_before_working(tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    r = subprocess.run([sys.executable, "-m", "sdekit", "demo", "--quick", "--out", str(blocker / "plots")],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and "--out" in r.stderr and "is a file" in r.stderr
    assert r.stdout == ""  # refused before the first solve

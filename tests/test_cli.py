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


def test_ensemble_prints_statistics_near_the_exact_ones(capsys):
    import json

    from sdekit.cli import main

    n = 20_000
    assert main(["ensemble", "--problem", "ou", "--method", "sra1", "--steps", "16", "--paths", str(n), "--save-at",
                 "0.5,1", "--stats", "mean,var,quantiles", "--format", "json", "--no-progress"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["n_paths"] == n and out["n_failed"] == 0 and out["t"] == [0.5, 1.0]
    rows = out["rows"]
    assert len(rows) == 2 * (2 + 5)  # per save time: mean, var, five quantiles
    for row in rows:
        if row["statistic"] in ("mean", "var"):  # SRA1's weak error on 16 steps is far below the standard error
            assert abs(row["z"]) < 4, row
        else:  # the sketch's rank error (1.65 % for k = 200) plus 4 sampling standard deviations of the rank
            level = float(row["statistic"][1:])
            assert abs(row["rank_error"]) < 0.0165 + 4 * (level * (1 - level) / n) ** 0.5, row


def test_ensemble_refuses_a_histogram_without_bins(capsys):
    from sdekit.cli import main

    assert main(["ensemble", "--problem", "gbm", "--stats", "histogram", "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--bins lo,hi,n" in err

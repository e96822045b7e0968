"""`python -m diffusion train|sample|likelihood` end to end, its errors, and the sample metrics it reports."""

import json
import math
import subprocess
import sys

import numpy as np
import pytest
from scipy import stats

import diffusion
import diffusion.datasets as ds
from diffusion import metrics


def _cli(*args, timeout=600):
    return subprocess.run([sys.executable, "-m", "diffusion", *map(str, args)], capture_output=True, text=True,
                          timeout=timeout)


def _in_process(capsys, *args):
    """``python -m diffusion ARGS`` run by its ``main`` in this process: (exit status, stdout, stderr).

    The end-to-end tests start the real command; the error checks run here, which saves a Python, torch
    and Numba start-up per check (an uncaught exception would fail the test, as a traceback would)."""
    from diffusion.cli import main

    try:
        code = main([str(a) for a in args])
    except SystemExit as exc:  # argparse's own errors exit with status 2
        code = exc.code
    out, err = capsys.readouterr()
    return code, out, err


def _png(path):
    assert path.exists() and path.stat().st_size > 5_000, path
    with open(path, "rb") as fh:
        assert fh.read(8) == b"\x89PNG\r\n\x1a\n"


# --------------------------------------------------------------------------- metrics
def test_sliced_wasserstein_of_a_shift_is_its_mean_projection():
    """N(0, I) against N(delta e1, I) in 2-D: every slice is W1 = |delta cos theta|, mean 2 delta / pi."""
    rng = np.random.default_rng(0)
    n, delta = 10_000, 0.5
    x = rng.standard_normal((n, 2))
    y = rng.standard_normal((n, 2)) + [delta, 0.0]
    floor = metrics.noise_floor(lambda m, s: np.random.default_rng(s).standard_normal((m, 2)), n, pairs=4)
    got = metrics.sliced_wasserstein(x, y, n_slices=2048)
    # the directions' own Monte Carlo error (sd of |cos| over 2048 slices) plus twice the sampling floor
    tol = 4 * delta * math.sqrt(0.5 - 4 / math.pi**2) / math.sqrt(2048) + 2 * floor.mean
    assert abs(got - 2 * delta / math.pi) < tol
    # unequal sizes go through the quantile integral: duplicating a sample changes nothing
    assert metrics.sliced_wasserstein(x[:500], y[:300]) == pytest.approx(
        metrics.sliced_wasserstein(np.r_[x[:500], x[:500]], y[:300]), rel=1e-12)
    assert metrics.sliced_wasserstein(x[:500], np.r_[y[:300], y[:300]]) == pytest.approx(
        metrics.sliced_wasserstein(x[:500], y[:300]), rel=1e-12)


def test_sliced_ks_extremes_and_floor_scaling():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((400, 3))
    assert metrics.sliced_ks(x, x) == 0.0
    assert metrics.sliced_ks(x[:, :1], x[:, :1] + 100.0) == 1.0  # 1-D: every direction separates them
    draw = lambda m, s: np.random.default_rng(s).standard_normal((m, 2))  # noqa: E731
    small, big = (metrics.noise_floor(draw, m, metric="sliced_ks", pairs=12) for m in (500, 2000))
    # the floor falls as 1/sqrt(n): a ratio of 2 within the spread of the two means
    se = math.hypot(small.std / small.mean, big.std / big.mean) / math.sqrt(12)
    assert abs(math.log(small.mean / big.mean) - math.log(2.0)) < 4 * se
    # two-sample KS of one projection: E D ~ 0.87 sqrt(2 / n)
    assert big.mean == pytest.approx(0.8687 * math.sqrt(2 / 2000), rel=0.15)


def test_metric_errors_name_the_argument():
    with pytest.raises(ValueError, match="non-finite"):
        metrics.sliced_wasserstein(np.array([[0.0, np.nan], [1.0, 1.0]]), np.zeros((3, 2)))
    with pytest.raises(ValueError, match="same dimension"):
        metrics.sliced_ks(np.zeros((3, 2)), np.zeros((3, 3)))
    with pytest.raises(ValueError, match="metric"):
        metrics.noise_floor(lambda m, s: np.zeros((m, 2)), 10, metric="fid")


# --------------------------------------------------------------------------- exact toy densities
@pytest.mark.parametrize("name", ["moons", "gmm", "checkerboard"])
def test_toy_densities_are_normalised_and_match_samples(name):
    # midpoint rule, step 1/30 (the board's edges fall between nodes); for the smooth densities its error
    # is ~exp(-2 pi^2 (0.057 / 0.033)^2) ~ 1e-25
    g = -4.0 + (np.arange(240) + 0.5) / 30
    xx, yy = np.meshgrid(g, g)
    lp = ds.log_prob(name, np.c_[xx.ravel(), yy.ravel()])
    assert np.exp(lp).sum() * (g[1] - g[0]) ** 2 == pytest.approx(1.0, abs=1e-6)
    # chi-square of a sample's counts in 8x8 cells against the density integrated over them
    x = ds.load(name, 40_000, seed=5).x
    edges = np.linspace(-3, 3, 9)
    counts, _, _ = np.histogram2d(x[:, 0], x[:, 1], bins=[edges, edges])
    fine = np.linspace(-3, 3, 8 * 24 + 1)  # steps of 1/32: the board's edges are cell edges here
    mid = 0.5 * (fine[1:] + fine[:-1])
    mx, my = np.meshgrid(mid, mid, indexing="ij")
    p = np.exp(ds.log_prob(name, np.c_[mx.ravel(), my.ravel()])).reshape(192, 192) * (fine[1] - fine[0]) ** 2
    expected = p.reshape(8, 24, 8, 24).sum(axis=(1, 3)) * len(x)
    keep = expected > 20
    chi2 = np.sum((counts[keep] - expected[keep]) ** 2 / expected[keep])
    assert stats.chi2.sf(chi2, keep.sum() - 1) > 1e-4, chi2
    rest = expected[~keep].sum()
    assert abs(counts[~keep].sum() - rest) < 4 * math.sqrt(rest + 1) + 1  # the sparse cells, pooled


def test_digit_splits_partition_the_digits_and_are_fixed():
    from sklearn.datasets import load_digits

    tr, te = ds.load("digits", split="train"), ds.load("digits", split="test")
    assert len(tr.x) == 1500 and len(te.x) == 297
    levels = lambda d: np.floor((d.x + 1.0) / d.bin_width).astype(int)  # noqa: E731 - undo the dequantisation
    rows = lambda k: sorted(map(bytes, k.astype(np.int8)))  # noqa: E731
    assert rows(np.r_[levels(tr), levels(te)]) == rows(load_digits().data.astype(int))
    np.testing.assert_array_equal(te.labels, ds.load("digits", split="test", seed=9).labels)
    with pytest.raises(ValueError, match="split"):
        ds.load("digits", split="validation")


def test_the_digit_classifier_is_a_fair_judge():
    from diffusion.runs import digit_classifier

    clf, acc = digit_classifier()
    assert acc >= 0.9  # logistic regression on 1,500 real digits, scored on the 297 held out


# --------------------------------------------------------------------------- the command line, end to end
def test_cli_train_sample_likelihood_on_moons(tmp_path):
    run = tmp_path / "runs" / "moons"
    r = _cli("train", "--data", "moons", "--out", run, "--steps", 60, "--eval-every", 30, "--checkpoint-every", 30,
             "--n", 2000, "--no-progress")
    assert r.returncode == 0, r.stderr
    assert "step 30:" in r.stdout and "held_out_loss" in r.stdout and "sliced_w1_ratio" in r.stdout
    for name in ("checkpoint.pt", "run.json"):
        assert (run / name).exists()
    _png(run / "losses.png")
    spec = json.loads((run / "run.json").read_text())
    assert spec["data"] == "moons" and spec["config"]["steps"] == 60 and spec["model"]["kind"] == "mlp"

    out = tmp_path / "samples.png"
    r = _cli("sample", "--run", run, "--method", "sra1", "--steps", 10, "--n", 300, "--out", out, "--json",
             tmp_path / "m.json")
    assert r.returncode == 0, r.stderr
    assert "sliced W1" in r.stdout and "noise floor" in r.stdout
    assert "first call on 8 samples, compilation and set-up" in r.stdout  # timed apart from the run
    _png(out)
    saved = np.load(tmp_path / "samples.npz")
    assert saved["x"].shape == (300, 2) and np.all(np.isfinite(saved["x"]))
    m = json.loads((tmp_path / "m.json").read_text())
    assert m["nfe"] == 21 and m["first_call_seconds"] > 0
    # the reported scores are the metrics' definitions on the saved samples and the run's held-out draw (seed 0)
    from diffusion.runs import Run

    held = Run.load(run).held_out(300, seed=1000).x
    assert m["sliced_w1"] == pytest.approx(metrics.sliced_wasserstein(saved["x"], held), rel=1e-12)
    assert m["sliced_ks"] == pytest.approx(metrics.sliced_ks(saved["x"], held), rel=1e-12)
    assert m["sliced_w1_ratio"] == pytest.approx(m["sliced_w1"] / m["sliced_w1_floor"], rel=1e-12)
    assert 0.0 < m["sliced_w1_floor_std"] < m["sliced_w1_floor"]

    r = _cli("likelihood", "--run", run, "--n", 40, "--json", tmp_path / "l.json")
    assert r.returncode == 0, r.stderr
    assert "nats" in r.stdout and "KL" in r.stdout
    lk = json.loads((tmp_path / "l.json").read_text())
    assert lk["n"] == 40 and math.isfinite(lk["nll"]) and lk["divergence"] == "exact" and lk["first_call_seconds"] > 0
    # KL(data || model) >= 0: an undertrained model may not beat the data's own entropy beyond noise
    assert lk["kl"] > -4 * lk["kl_se"]

    # resume to more steps; a finished run without --resume is refused and left untouched
    before = (run / "checkpoint.pt").read_bytes()
    r = _cli("train", "--data", "moons", "--out", run, "--steps", 60, "--no-progress")
    assert r.returncode == 2 and "already holds a run" in r.stderr and "--resume" in r.stderr
    assert (run / "checkpoint.pt").read_bytes() == before
    r = _cli("train", "--out", run, "--resume", "--steps", 80, "--no-progress")
    assert r.returncode == 0, r.stderr
    assert "80 steps" in r.stdout


def test_cli_digits_conditional_grid_and_bits_per_dim(tmp_path):
    run = tmp_path / "digits"
    r = _cli("train", "--data", "digits", "--out", run, "--steps", 4, "--width", 8, "--batch-size", 16,
             "--eval-every", 2, "--no-progress")
    assert r.returncode == 0, r.stderr
    out = tmp_path / "grid.png"
    r = _cli("sample", "--run", run, "--method", "ddim", "--steps", 3, "--n", 20, "--guidance", 1.0, "--out", out)
    assert r.returncode == 0, r.stderr
    assert "classifier accuracy" in r.stdout
    _png(out)
    saved = np.load(tmp_path / "grid.npz")
    assert saved["x"].shape == (20, 64) and sorted(set(saved["labels"].tolist())) == list(range(10))
    r = _cli("likelihood", "--run", run, "--n", 6, "--probes", 2, "--rtol", 1e-3, "--atol", 1e-3)
    assert r.returncode == 0, r.stderr
    assert "bits/dim" in r.stdout and "Hutchinson" in r.stdout


def test_cli_errors_are_one_clear_line(tmp_path, capsys):
    # the real command once: its error reaches stderr as one line, exit status 2, no traceback
    r = _cli("sample", "--run", tmp_path / "nowhere")
    assert r.returncode == 2 and "no run folder" in r.stderr and "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and r.stdout == ""

    def error(*args):
        code, out, err = _in_process(capsys, *args)
        assert code == 2, (args, code, out, err)
        return err

    assert "unknown dataset 'mnist'" in (e := error("train", "--data", "mnist", "--out", tmp_path / "x")) and "moons" in e
    assert "unknown method 'dpm_fast'" in (e := error("sample", "--run", tmp_path, "--method", "dpm_fast")) and "sra1" in e
    assert "positive integer" in error("train", "--data", "moons", "--out", tmp_path / "y", "--steps", 0)
    assert "nothing to resume" in error("train", "--out", tmp_path / "z", "--resume")

    run = tmp_path / "run"
    assert _in_process(capsys, "train", "--data", "gmm", "--out", run, "--steps", 5, "--eval-every", 0,
                       "--no-progress", "--n", 500)[0] == 0
    assert "not class-conditional" in error("sample", "--run", run, "--label", 2)
    assert "give --steps or --nfe, not both" in error("sample", "--run", run, "--nfe", 8, "--steps", 8)
    # --nfe without --method: the default sampler for that budget, recorded in the JSON
    code, out, err = _in_process(capsys, "sample", "--run", run, "--nfe", 8, "--n", 50, "--out", tmp_path / "d.png",
                                 "--json", tmp_path / "d.json")
    assert code == 0, err
    m = json.loads((tmp_path / "d.json").read_text())
    assert m["nfe"] <= 8 and m["method"] == diffusion.default_sampler(8)["method"]
    ckpt = run / "checkpoint.pt"
    ckpt.write_bytes(ckpt.read_bytes()[:1000])  # truncated, e.g. by a full disk
    for verb in ("sample", "likelihood"):
        e = error(verb, "--run", run)
        assert "corrupt or truncated" in e and len(e.strip().splitlines()) == 1
    assert "corrupt or truncated" in error("train", "--out", run, "--resume")
    assert len(ckpt.read_bytes()) == 1000  # the damaged file is reported, not replaced


@pytest.mark.slow
def test_a_two_minute_moons_model_is_within_twice_the_noise_floor(tmp_path):
    """The 2-D quality bar at test size: 3,000 steps, 2,000 samples from two integrators.

    It stays long (about a minute on 2 cores, most of it training): fewer steps leave the samples at
    1.5-1.9 times the floor (measured at 1,000-1,500 steps), too close to the bar to tell a regression.

    The sliced W1 and KS distances of the samples to held-out data are compared with the mean distance
    between two independent data samples of the same size (8 pairs); the bar is a ratio of 2.
    Measured about 0.9-1.3 for both samplers; 5 seeds in docs/diffusion.md.
    """
    from diffusion.runs import Run, evaluate_samples, sample_run, train_run

    train_run(tmp_path / "m", "moons", steps=3000, eval_every=0, progress=False, log=lambda s: None)
    run = Run.load(tmp_path / "m")
    for method, steps, grid in (("sra1", 100, "uniform"), ("dpmpp_2m", 20, "logsnr")):
        x, _, _ = sample_run(run, method=method, steps=steps, n=2000, grid=grid, seed=3)
        m = evaluate_samples(run, x)
        assert m["sliced_w1_ratio"] < 2.0 and m["sliced_ks_ratio"] < 2.0, (method, m)


def test_any_network_kind_fits_the_digits(tmp_path):
    """Network sizes default per kind, not per data set: an MLP on the digits takes the MLP's sizes."""
    from diffusion.runs import MODEL_DEFAULTS, Run, train_run

    train_run(tmp_path / "d", "digits", model="mlp", depth=2, steps=2, eval_every=0, progress=False,
              log=lambda s: None)
    spec = Run.load(tmp_path / "d").spec["model"]
    assert spec == {"kind": "mlp", "dim": 64, "hidden": MODEL_DEFAULTS["mlp"]["hidden"], "depth": 2,
                    "embed": MODEL_DEFAULTS["mlp"]["embed"], "n_classes": 10}
    with pytest.raises(ValueError, match="U-Net needs image data"):
        train_run(tmp_path / "m", "moons", model="unet", steps=2, progress=False)

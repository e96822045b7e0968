"""No silent wrong answers in the diffusion front end: refused options, consistent run folders, one-line errors.

Each test names what the code did before: sampled an unconditional run "with guidance", ignored options on
``--resume``, left a folder whose ``run.json`` described another model than its ``checkpoint.pt``, kept stale
temporary files, accepted a negative gradient clip, or ended in a traceback from inside numpy/torch/numba.
"""

import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from cli_checks import one_line_error

import diffusion
from diffusion.models import UNet
from diffusion.runs import RUN_FILE, Run, likelihood_run, sample_run, train_run
from diffusion.training import CHECKPOINT, TrainConfig, save_checkpoint, train


def _cli(*args, timeout=300):
    return subprocess.run([sys.executable, "-m", "diffusion", *map(str, args)], capture_output=True, text=True,
                          timeout=timeout)


def _quiet(text):
    pass


@pytest.fixture(scope="module")
def gmm_run(tmp_path_factory):
    """A tiny unconditional run (4 steps, checkpoints at 2 and 4)."""
    out = tmp_path_factory.mktemp("runs") / "gmm"
    train_run(out, "gmm", n=300, steps=4, batch_size=32, checkpoint_every=2, eval_every=0, progress=False, log=_quiet)
    return out


@pytest.fixture
def run_copy(gmm_run, tmp_path):
    dst = tmp_path / "run"
    shutil.copytree(gmm_run, dst)
    return dst


# --------------------------------------------------------------------------- TrainConfig
@pytest.mark.parametrize("field, value", [
    ("grad_clip", -1.0), ("grad_clip", math.nan), ("ema_decay", 1.0), ("ema_decay", -0.1), ("label_dropout", 1.0),
    ("label_dropout", -0.5), ("lr", math.inf), ("lr", "0.1"), ("steps", 0), ("steps", True), ("batch_size", 2.5),
    ("warmup", -1), ("seed", -3), ("checkpoint_every", 0),
])
def test_train_config_validates_every_field(field, value):
    """A negative clip used to be accepted from Python: clip_grad_norm_ then flips every gradient's sign."""
    with pytest.raises(ValueError, match=f"`{field}`"):
        TrainConfig(**{field: value})


def test_train_config_accepts_no_clipping():
    assert TrainConfig(grad_clip=None).grad_clip is None and TrainConfig(grad_clip=0).grad_clip == 0


# --------------------------------------------------------------------------- guidance
def test_guidance_on_an_unconditional_run_is_refused(gmm_run):
    """Guidance had no class to guide toward: the samples equalled guidance 0's while the CLI reported 2 calls."""
    run = Run.load(gmm_run)
    with pytest.raises(ValueError, match="--guidance 5 needs a class-conditional run"):
        sample_run(run, method="euler", steps=2, n=8, guidance=5.0)
    with pytest.raises(ValueError, match="guidance"):
        run.score(None, 5.0)
    with pytest.raises(ValueError, match="`guidance` must be a non-negative number"):
        sample_run(run, method="euler", steps=2, n=8, guidance=-1.0)
    x, _, _ = sample_run(run, method="euler", steps=2, n=8, guidance=0.0)  # no guidance: fine
    assert x.shape == (8, 2)


# --------------------------------------------------------------------------- resume
@pytest.mark.parametrize("option, value, shown", [
    ("lr", 1e-9, "--lr 1e-09 (the run has 0.002)"),
    ("batch_size", 4, "--batch-size 4 (the run has 32)"),
    ("model", "unet", "--model 'unet' (the run has 'mlp')"),
    ("hidden", 7, "--hidden 7 (the run has 128)"),
    ("width", 8, "--width 8 (this run's mlp network has no width)"),
    ("sde", "ve", "--sde 've' (the run has 'vp')"),
    ("n", 1000, "--n 1000 (the run has 300)"),
    ("data_seed", 3, "--data-seed 3 (the run has 0)"),
    ("conditional", True, "--conditional True (the run has False)"),
    ("weighting", "none", "--weighting 'none' (the run has 'sigma2')"),
    ("grad_clip", 0.5, "--grad-clip 0.5 (the run has 1.0)"),
])
def test_resume_refuses_options_that_conflict_with_the_run(run_copy, option, value, shown):
    """They used to be ignored silently: the run went on with its stored settings."""
    before = (run_copy / CHECKPOINT).read_bytes()
    with pytest.raises(ValueError, match="a resumed run keeps its settings") as err:
        train_run(run_copy, resume=True, steps=6, progress=False, log=_quiet, **{option: value})
    assert shown in str(err.value)
    assert (run_copy / CHECKPOINT).read_bytes() == before


def test_resume_applies_and_records_the_options_that_may_change(run_copy):
    """Equal values are no conflict; --steps and --checkpoint-every apply, and run.json records the change."""
    run = train_run(run_copy, "gmm", resume=True, lr=2e-3, batch_size=32, sde="vp", steps=6, checkpoint_every=3,
                    progress=False, log=_quiet)
    assert run.step == 6 and run.config.steps == 6 and run.config.checkpoint_every == 3
    described = json.loads((run_copy / RUN_FILE).read_text())
    assert described["config"]["steps"] == 6 and described["resumes"] == [{"step": 4, "steps": 6,
                                                                           "checkpoint_every": 3}]


def test_a_size_of_another_network_is_refused(tmp_path):
    """--width sizes the U-Net: it was dropped silently when the network is an MLP."""
    with pytest.raises(ValueError, match="--width does not apply to the mlp network"):
        train_run(tmp_path / "run", "moons", width=8, steps=2, progress=False, log=_quiet)
    assert not (tmp_path / "run").exists()


# --------------------------------------------------------------------------- consistent run folders
def test_a_force_run_killed_before_its_first_checkpoint_leaves_the_old_run(run_copy):
    """run.json used to be written first: a SIGKILL left the new model's run.json beside the old checkpoint."""
    old_ckpt = (run_copy / CHECKPOINT).read_bytes()
    old_json = (run_copy / RUN_FILE).read_text()
    proc = subprocess.Popen([sys.executable, "-m", "diffusion", "train", "--data", "moons", "--out", str(run_copy),
                             "--force", "--steps", "100000", "--checkpoint-every", "100000", "--eval-every", "1",
                             "--n", "500", "--no-progress"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 240
        line = ""
        while not line.startswith("step 1:"):  # the first evaluation: training has started, no checkpoint yet
            line = proc.stdout.readline()
            assert line or proc.poll() is None, "the training ended early"
            assert time.monotonic() < deadline, "the training did not start"
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        proc.stdout.close()
    assert (run_copy / CHECKPOINT).read_bytes() == old_ckpt
    assert (run_copy / RUN_FILE).read_text() == old_json
    run = Run.load(run_copy)
    assert run.data == "gmm" and json.loads(old_json)["data"] == "gmm"


def test_a_run_json_of_another_run_is_one_line(run_copy, tmp_path):
    other = tmp_path / "other"
    train_run(other, "moons", n=300, steps=2, batch_size=16, eval_every=0, progress=False, log=_quiet)
    shutil.copy(other / RUN_FILE, run_copy / RUN_FILE)
    with pytest.raises(ValueError, match=f"does not describe .*{CHECKPOINT}.*--resume"):
        Run.load(run_copy)
    # resuming rewrites it from the checkpoint's own description
    train_run(run_copy, resume=True, steps=5, progress=False, log=_quiet)
    assert json.loads((run_copy / RUN_FILE).read_text())["data"] == "gmm"


def test_stale_temporary_files_are_cleaned_on_the_next_write(run_copy):
    """A SIGKILL during a write leaves NAME.XXXXXXXX.tmp; they used to stay for ever."""
    ours = [run_copy / "checkpoint.pt.a1b2_c3d.tmp", run_copy / "run.json.zz99aa11.tmp"]
    theirs = [run_copy / "notes.tmp", run_copy / "checkpoint.pt.tmp", run_copy / "checkpoint.pt.too-long-name.tmp"]
    for p in ours + theirs:
        p.write_bytes(b"partial")
    train_run(run_copy, resume=True, steps=5, progress=False, log=_quiet)
    assert not any(p.exists() for p in ours)
    assert all(p.exists() for p in theirs)  # not our names: left alone
    save_checkpoint(run_copy / "x.pt", {"a": 1})
    assert sorted(p.name for p in run_copy.iterdir() if p.name.endswith(".tmp")) == sorted(p.name for p in theirs)


def test_a_checkpoint_of_another_network_is_one_line(run_copy):
    net = UNet(size=8, channels=1, width=8)
    x = np.zeros((10, 64))
    cfg = TrainConfig(steps=6, batch_size=4)
    with pytest.raises(ValueError, match=f"{CHECKPOINT} holds the weights of another network than this UNet"):
        train(net, diffusion.VPSDE(), x, cfg, out=run_copy, resume=True, progress=False)


# --------------------------------------------------------------------------- scores and inputs
def _right(t, x, p):
    return -x


def _two_rows(t, x, p):
    return -x[:2]


def _one_row(t, x, p):
    return -x[:1]


def _three_rows(t, x, p):
    return -x[:3]


def _per_row(t, x, p):
    return -x[:, 0]


def _wider(t, x, p):
    return np.concatenate((x, x), axis=1)


def _integers(t, x, p):
    return np.zeros(x.shape, dtype=np.int64)


def _nan(t, x, p):
    return x * np.nan


@pytest.mark.parametrize("fn, match", [
    (_two_rows, r"returned shape \(2, 2\) for x_T of shape \(3, 2\)"),
    (_one_row, r"returned shape \(1, 2\)"),  # numpy broadcast this one silently: every row got row 0's score
    (_per_row, r"returned shape \(3,\)"),
    (_wider, r"returned shape \(3, 4\)"),
    (_integers, "returned int64 values"),
    (_nan, "NaN or infinite"),
])
@pytest.mark.parametrize("backend", ["numpy", "numba"])
def test_a_score_of_the_wrong_shape_or_type_is_named_before_solving(fn, match, backend):
    sde = diffusion.VPSDE()
    score = diffusion.Score(fn, sde, dim=2)
    with pytest.raises(ValueError, match=match):
        diffusion.sample(sde, score, 10, method="euler", steps=2, backend=backend)


def test_every_score_call_checks_the_shape():
    """A score right on the 3-row probe but wrong on the batch is caught at its first call in the solver."""
    sde = diffusion.VPSDE()
    with pytest.raises(ValueError, match="another shape than its input"):
        diffusion.sample(sde, diffusion.Score(_three_rows, sde, dim=2), 10, method="euler", steps=2, backend="numpy")


def test_x_T_must_fit_the_score():
    sde = diffusion.VPSDE()
    score = diffusion.Score(_right, sde, dim=2)
    with pytest.raises(ValueError, match=r"`x_T` must have shape \(n, dim\) = \(5, 2\), got \(5, 3\)"):
        diffusion.sample(sde, score, 5, method="euler", steps=2, x_T=np.zeros((5, 3)))
    with pytest.raises(ValueError, match="`x_T` must hold real numbers, got complex128"):
        diffusion.sample(sde, score, 2, method="euler", steps=2, x_T=np.ones((2, 2)) * 1j)
    with pytest.raises(ValueError, match="`x_T` contains NaN"):
        diffusion.sample(sde, score, 2, method="euler", steps=2, x_T=np.full((2, 2), np.nan))
    nodim = diffusion.Score(_right, sde)  # the dimension comes from x_T; the network's failure is one line
    net = torch.nn.Linear(2, 2).double()
    bad = diffusion.Score.from_module(lambda x, c: net(x), sde, parameterisation="score")
    with pytest.raises(ValueError, match=r"fails on x_T of shape \(3, 3\).*check the dimension of x_T"):
        diffusion.sample(sde, bad, 5, method="euler", steps=2, x_T=np.zeros((5, 3)))
    assert diffusion.sample(sde, nodim, 4, method="euler", steps=2, x_T=np.ones((4, 3)), backend="numpy").x.shape == (4, 3)


def test_likelihood_data_must_fit_the_score(gmm_run):
    sde = diffusion.VPSDE()
    score = diffusion.Score(_right, sde, dim=2)
    with pytest.raises(ValueError, match=r"`x` has dimension 3 \(shape \(4, 3\)\) but the score is for dimension 2"):
        diffusion.log_likelihood(sde, score, np.zeros((4, 3)))
    with pytest.raises(ValueError, match="`x` holds no data points"):
        diffusion.log_likelihood(sde, score, np.zeros((0, 2)))
    with pytest.raises(ValueError, match=r"returned shape \(2, 2\)"):
        diffusion.log_likelihood(sde, diffusion.Score(_two_rows, sde, dim=2), np.zeros((4, 2)))
    with pytest.raises(ValueError, match="`n` .* must be an integer >= 2"):
        likelihood_run(Run.load(gmm_run), n=1)


# --------------------------------------------------------------------------- the command line
def _main(capsys, *args):
    """``python -m diffusion ARGS`` in this process (no interpreter start-up): ``(exit status, stderr)``."""
    from diffusion.cli import main

    code = main([str(a) for a in args])
    return code, capsys.readouterr().err


def test_cli_refusals_are_one_line(run_copy, tmp_path, capsys):
    r = _cli("sample", "--run", run_copy, "--guidance", 5, "--steps", 2, "--n", 10, "--method", "euler")
    one_line_error(r, "--guidance 5 needs a class-conditional run")
    r = _cli("train", "--out", run_copy, "--resume", "--lr", "1e-9", "--batch-size", 4, "--no-progress")
    one_line_error(r, "--lr 1e-09 (the run has 0.002)", "--batch-size 4 (the run has 32)")

    blocker = tmp_path / "a_file"
    blocker.write_text("")
    cases = [
        (("sample", "--run", run_copy, "--steps", 2, "--n", 10, "--method", "euler", "--out", blocker / "s.png"),
         ("--out", "is a file, not a folder")),
        (("sample", "--run", run_copy, "--steps", 2, "--n", 10, "--method", "euler", "--json", tmp_path),
         ("--json", "is a folder")),
        (("likelihood", "--run", run_copy, "--n", 4, "--json", blocker / "l.json"), ("--json", "is a file")),
        (("train", "--data", "gmm", "--out", blocker / "run", "--steps", 2, "--no-progress"), ("--out", "is a file")),
        (("train", "--data", "moons", "--out", tmp_path / "m", "--model", "mlp", "--width", 8, "--no-progress"),
         ("--width does not apply to the mlp network",)),
        (("train", "--data", "moons", "--out", tmp_path / "m", "--ema-decay", 1, "--no-progress"),
         ("`ema_decay` must lie in [0, 1)",)),
        (("train", "--out", run_copy, "--resume", "--sde", "ve", "--data-seed", 0, "--no-progress"),
         ("--sde 've' (the run has 'vp')",)),
    ]
    before = (run_copy / CHECKPOINT).read_bytes()
    for args, needles in cases:
        code, err = _main(capsys, *args)
        assert code == 2 and len(err.strip().splitlines()) == 1, (args, err)
        assert all(n in err for n in needles), (args, err)
    assert (run_copy / CHECKPOINT).read_bytes() == before
    assert not (tmp_path / "m").exists()  # refused before anything was written

"""Training runs on disk: what ``python -m diffusion train|sample|likelihood`` does, callable from Python.

A run folder holds

* ``checkpoint.pt`` — model, EMA, optimiser, schedule, step, generator state,
  losses, evaluations, and the run's description (written atomically);
* ``run.json`` — that description, readable: data set, SDE, network and
  training settings, so the run can be rebuilt without the command line that
  made it;
* ``losses.png`` — the training loss and the periodic evaluations.

:func:`train_run` makes or continues a run, :class:`Run` loads one,
:func:`sample_run` draws from it with any integrator of :func:`diffusion.sample`
(classifier-free guidance for class-conditional networks),
:func:`evaluate_samples` scores samples against held-out data (sliced
Wasserstein and KS against the two-data-sample noise floor for 2-D sets; a
classifier's accuracy on class-conditional digits) and :func:`likelihood_run`
reports the held-out log-likelihood (bits/dim for the digits).
"""

from __future__ import annotations

import functools
import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from sdekit.checks import require, writable_path

from . import datasets, metrics
from .likelihood import log_likelihood
from .models import ScoreMLP, UNet, as_score
from .sampling import METHODS, sample
from .score import Score, classifier_free_guidance
from .sdes import VESDE, VPSDE, DiffusionSDE, SubVPSDE
from .training import CHECKPOINT, TrainConfig, dsm_loss, load_checkpoint, load_weights, train, write_atomic

torch = require("torch", extra="diffusion", what="diffusion.runs (training and sampling runs)")

__all__ = ["Run", "train_run", "sample_run", "evaluate_samples", "likelihood_run", "make_sde", "build_model",
           "defaults", "MODEL_DEFAULTS", "SDES", "RUN_FILE", "plot_losses", "plot_samples", "digit_classifier"]

RUN_FILE = "run.json"
SDES = ("vp", "subvp", "ve")
FORMAT = 1


def make_sde(kind: str = "vp", schedule: str = "linear") -> DiffusionSDE:
    """The forward SDE of a run: ``"vp"`` (``schedule`` linear or cosine), ``"subvp"`` or ``"ve"``."""
    if kind not in SDES:
        raise ValueError(f"unknown SDE {kind!r}; choose one of {list(SDES)}.")
    if kind == "vp":
        return VPSDE(schedule=schedule)
    if schedule != "linear":
        raise ValueError(f"`schedule` {schedule!r} applies to the VP SDE only (got SDE {kind!r}).")
    return SubVPSDE() if kind == "subvp" else VESDE()


MODEL_DEFAULTS = {"mlp": {"hidden": 128, "depth": 3, "embed": 32}, "unet": {"width": 32, "embed": 64}}


def defaults(data: str) -> dict:
    """Default network kind and training settings for data set ``data`` (what ``train`` uses unless told);
    the network's own sizes default to ``MODEL_DEFAULTS[kind]``."""
    if data == "digits":
        return {"model": "unet", "steps": 5000, "batch_size": 128, "lr": 2e-3, "n": None, "conditional": True,
                "eval_every": 1000, "checkpoint_every": 500}
    return {"model": "mlp", "steps": 8000, "batch_size": 512, "lr": 2e-3, "n": 20_000, "conditional": False,
            "eval_every": 1000, "checkpoint_every": 1000}


def build_model(spec: dict) -> torch.nn.Module:
    """A fresh network from a run's ``model`` description."""
    kw = dict(spec)
    kind = kw.pop("kind", None)
    if kind not in MODEL_DEFAULTS:
        raise ValueError(f"unknown network kind {kind!r}; choose 'mlp' or 'unet'.")
    try:
        return (ScoreMLP if kind == "mlp" else UNet)(**kw)
    except TypeError as exc:
        raise ValueError(f"the network description {spec} does not fit a {kind} ({exc}).") from None


# --------------------------------------------------------------------------- loading
@dataclass
class Run:
    """A trained (or partly trained) run, loaded from its folder."""

    path: Path
    spec: dict
    config: TrainConfig
    sde: DiffusionSDE
    net: torch.nn.Module  # the EMA weights unless loaded with ema=False
    step: int
    losses: list = field(default_factory=list)
    evals: list = field(default_factory=list)

    @classmethod
    def load(cls, path, *, ema: bool = True) -> Run:
        """Load the run in folder ``path`` (its EMA weights by default)."""
        path = Path(path)
        if not path.is_dir():
            raise FileNotFoundError(f"no run folder at {path}; train one first: "
                                    f"python -m diffusion train --data moons --out {path}")
        if not (path / CHECKPOINT).exists():
            raise FileNotFoundError(f"{path} holds no {CHECKPOINT}; it is not a run folder, or its training was "
                                    f"stopped before the first checkpoint (train again with --out {path}).")
        state = load_checkpoint(path / CHECKPOINT)
        spec = state.get("run")
        if not isinstance(spec, dict) or spec.get("format") != FORMAT:
            raise ValueError(f"{path / CHECKPOINT} has no run description (it was written by diffusion.training.train "
                             "directly, not by train_run / the command line); load it with load_checkpoint.")
        described = path / RUN_FILE
        if described.exists():
            try:
                text = json.loads(described.read_text())
            except (OSError, ValueError) as exc:
                text = f"unreadable ({exc})"
            if text != json.loads(json.dumps({**spec, "config": state["config"]})):
                raise ValueError(f"{described} does not describe {path / CHECKPOINT} (a training was stopped between "
                                 "writing them, or one was replaced): continue the checkpoint's run with python -m "
                                 f"diffusion train --out {path} --resume, or retrain with --force.")
        net = build_model(spec["model"])
        load_weights(net, state["ema"]["module"] if ema else state["model"], path / CHECKPOINT)
        net.eval()
        for p in net.parameters():
            p.requires_grad_(False)
        return cls(path, spec, TrainConfig(**state["config"]), make_sde(**spec["sde"]), net, int(state["step"]),
                   list(state["losses"]), list(state.get("evals", [])))

    @property
    def data(self) -> str:
        return self.spec["data"]

    @property
    def conditional(self) -> bool:
        return bool(getattr(self.net, "n_classes", None))

    def held_out(self, n: int | None = None, *, seed: int = 0) -> datasets.Dataset:
        """Held-out data: the digits' test split, or a fresh draw of a toy set independent of the training rows."""
        return datasets.load(self.data, n, seed=self.spec["data_seed"] + 1 + seed, split="test")

    def score(self, label: int | None = None, guidance: float = 0.0) -> Score:
        """The run's score; ``label`` (class-conditional runs) with classifier-free guidance weight ``guidance``."""
        return _score(self.net, self.sde, label, guidance)


def _score(net, sde, label=None, guidance=0.0) -> Score:
    n_classes = getattr(net, "n_classes", None)
    if label is None:
        if guidance:
            raise ValueError("`guidance` needs a class `label` to guide toward.")
        return as_score(net, sde)
    if not n_classes:
        raise ValueError("this run's network is not class-conditional: train with --conditional to sample a class.")
    if not (isinstance(label, int | np.integer) and 0 <= label < n_classes):
        raise ValueError(f"`label` must be a class in 0..{n_classes - 1}, got {label!r}.")
    cond = as_score(net, sde, label=int(label))
    if not guidance:
        return cond
    if not (guidance > 0 and math.isfinite(guidance)):
        raise ValueError(f"`guidance` must be a non-negative number, got {guidance!r}.")
    return classifier_free_guidance(cond, as_score(net, sde), guidance)


# --------------------------------------------------------------------------- training
def _spec(data: datasets.Dataset, sde: dict, model: dict, data_seed: int, n) -> dict:
    return {"format": FORMAT, "data": data.name, "n": n, "data_seed": data_seed, "dim": data.dim,
            "image_shape": data.image_shape, "bin_width": data.bin_width, "sde": sde, "model": model}


def _model_spec(data: datasets.Dataset, kind: str, conditional: bool, sizes: dict) -> dict:
    """The ``model`` description: ``sizes`` (``None`` entries take ``MODEL_DEFAULTS[kind]``) and the data's shape."""
    if kind not in MODEL_DEFAULTS:
        raise ValueError(f"unknown network kind {kind!r}; choose 'mlp' or 'unet'.")
    if conditional and not data.n_classes:
        raise ValueError(f"data set {data.name!r} has no labels; it cannot train a class-conditional network.")
    foreign = [k for k, v in sizes.items() if v is not None and k not in MODEL_DEFAULTS[kind]]
    if foreign:
        sized = ", ".join(_option(k) for k in MODEL_DEFAULTS[kind])
        raise ValueError(f"{', '.join(_option(k) for k in foreign)} does not apply to the {kind} network (its sizes: "
                         f"{sized}); drop it, or choose the network it sizes with --model.")
    spec = {k: int(v if sizes.get(k) is None else sizes[k]) for k, v in MODEL_DEFAULTS[kind].items()}
    spec["n_classes"] = data.n_classes if conditional else None
    if kind == "mlp":
        return {"kind": "mlp", "dim": data.dim, **spec}
    if data.image_shape is None:
        raise ValueError(f"the U-Net needs image data; {data.name!r} is not (use --model mlp).")
    c, size, _ = data.image_shape
    return {"kind": "unet", "size": size, "channels": c, **spec}


# Options of train_run that define a run: a resumed run keeps them (an explicit different value is refused).
# Where the run keeps each: its description (spec), its network (spec["model"]) or its TrainConfig.
_RUN_DEFINING = {"data": ("spec", "data"), "n": ("spec", "n"), "data_seed": ("spec", "data_seed"),
                 "sde": ("sde", "kind"), "schedule": ("sde", "schedule"), "model": ("model", "kind"),
                 "hidden": ("model", "hidden"), "depth": ("model", "depth"), "width": ("model", "width"),
                 "embed": ("model", "embed"), "conditional": ("model", "n_classes")}
# steps, checkpoint_every and eval_every may change on resume (applied, and recorded in run.json under "resumes").


def _option(name: str) -> str:
    return "--" + name.replace("_", "-")


def _resume_conflicts(spec: dict, config: dict, given: dict) -> list:
    """``"--option value (the run has value)"`` for each explicit option that differs from the stored run."""
    out = []
    for name, value in given.items():
        if value is None:
            continue
        if name in _RUN_DEFINING:
            where, key = _RUN_DEFINING[name]
            have = spec.get(key) if where == "spec" else spec[where].get(key, "absent")
            if name == "conditional":
                have, value = have is not None, bool(value)
            elif have == "absent":
                out.append(f"{_option(name)} {value!r} (this run's {spec['model']['kind']} network has no {key})")
                continue
        else:
            have = config.get(name)
            if name == "grad_clip":
                have, value = have or 0.0, value or 0.0
        if value != have:
            out.append(f"{_option(name)} {value!r} (the run has {have!r})")
    return out


def _write_description(out: Path, state: dict) -> None:
    """``run.json``: the checkpoint's own description (written atomically, after the checkpoint it describes)."""
    text = json.dumps({**state["run"], "config": state["config"]}, indent=2) + "\n"
    write_atomic(out / RUN_FILE, lambda fh: fh.write(text.encode()))


def train_run(out, data: str | None = None, *, sde: str | None = None, schedule: str | None = None,
              model: str | None = None, hidden: int | None = None, depth: int | None = None, width: int | None = None,
              embed: int | None = None, conditional: bool | None = None, n: int | None = None,
              data_seed: int | None = None, steps: int | None = None, batch_size: int | None = None,
              lr: float | None = None, eval_every: int | None = None, checkpoint_every: int | None = None,
              resume: bool = False, force: bool = False, progress: bool = True,
              log: Callable[[str], None] | None = None, **config) -> Run:
    """Train a score network on ``data`` into folder ``out`` (or continue it with ``resume=True``).

    Unset options (``None``) take :func:`defaults` for the data set (SDE
    ``"vp"``, schedule ``"linear"``, ``data_seed`` 0). ``config`` holds the
    remaining :class:`~diffusion.training.TrainConfig` fields (``loss``,
    ``weighting``, ``ema_decay``, ``grad_clip``, ``label_dropout``, ``seed``,
    ``lr_schedule``, ``warmup``).

    A folder that already holds a run is never overwritten unless
    ``force=True``. ``resume=True`` continues it from its last checkpoint with
    its own settings: an explicit option that differs from the stored run
    (data, network, SDE, learning rate, batch size, loss, ...) is refused;
    ``steps`` (to extend training), ``checkpoint_every`` and ``eval_every``
    may change, and each change is recorded in the run's description
    (``resumes`` in ``run.json``).

    ``run.json`` is written after each checkpoint, from the description stored
    inside it, so the folder always holds one run: a training stopped before
    its first checkpoint (a ``force`` run included) leaves the previous files
    as they were. Every ``eval_every`` steps the EMA network is evaluated on
    held-out data (see :func:`_evaluator`); the results go to the checkpoint
    and the log.
    """
    log = log or _say
    out = Path(out)
    ckpt = out / CHECKPOINT
    writable_path(out, "--out", folder=True)
    if resume:
        if not ckpt.exists():
            raise FileNotFoundError(f"nothing to resume: {ckpt} does not exist (train without --resume first).")
        state = load_checkpoint(ckpt)
        spec = state.get("run")
        if not isinstance(spec, dict) or spec.get("format") != FORMAT:
            raise ValueError(f"{ckpt} has no run description; it cannot be resumed from the command line.")
        given = dict(data=data, n=n, data_seed=data_seed, sde=sde, schedule=schedule, model=model, hidden=hidden,
                     depth=depth, width=width, embed=embed, conditional=conditional, batch_size=batch_size, lr=lr,
                     **config)
        unknown = sorted(set(config) - set(TrainConfig.__dataclass_fields__))
        if unknown:
            raise ValueError(f"unknown training settings {unknown}; see diffusion.training.TrainConfig.")
        conflicts = _resume_conflicts(spec, state["config"], given)
        if conflicts:
            raise ValueError(f"a resumed run keeps its settings, and {ckpt} differs: {'; '.join(conflicts)}; leave "
                             "these options out, or start a new run (--force, or another --out).")
        _write_description(out, state)  # run.json describes this checkpoint from now on
        cfg = dict(state["config"])
        changed = {}
        for name, value in (("steps", steps), ("checkpoint_every", checkpoint_every)):
            if value is not None and value != cfg[name]:
                cfg[name] = changed[name] = value
        cfg = TrainConfig(**cfg)
        if eval_every is not None and eval_every != spec.get("eval_every"):
            changed["eval_every"] = eval_every
        eval_every = spec.get("eval_every") if eval_every is None else eval_every
        spec = {**spec, "eval_every": eval_every}
        if changed:
            spec["resumes"] = [*spec.get("resumes", []), {"step": int(state["step"]), **changed}]
        evals = list(state.get("evals", []))
        train_data = datasets.load(spec["data"], spec["n"], seed=spec["data_seed"], split="train")
        if int(state["step"]) >= cfg.steps:
            log(f"{out}: already trained for {state['step']} steps (pass a larger --steps to train on).")
    else:
        if data is None:
            raise ValueError("give the data set to train on (--data); one of " + ", ".join(datasets.DATASETS) + ".")
        if ckpt.exists() and not force:
            raise FileExistsError(f"{out} already holds a run; continue it with --resume, or pass --force to "
                                  "overwrite it, or choose another --out.")
        if data not in datasets.DATASETS:
            raise ValueError(f"unknown dataset {data!r}; choose one of {list(datasets.DATASETS)}.")
        sde, schedule, data_seed = sde or "vp", schedule or "linear", 0 if data_seed is None else data_seed
        base = defaults(data)
        opts = {k: (base[k] if v is None else v) for k, v in dict(
            model=model, conditional=conditional, n=n, steps=steps, batch_size=batch_size, lr=lr,
            eval_every=eval_every, checkpoint_every=checkpoint_every).items()}
        train_data = datasets.load(data, opts["n"], seed=data_seed, split="train")
        mspec = _model_spec(train_data, opts["model"], bool(opts["conditional"]),
                            {"hidden": hidden, "depth": depth, "width": width, "embed": embed})
        make_sde(sde, schedule)  # validates
        spec = _spec(train_data, {"kind": sde, "schedule": schedule}, mspec, data_seed, opts["n"])
        eval_every = opts["eval_every"]
        spec["eval_every"] = eval_every
        cfg = TrainConfig(steps=opts["steps"], batch_size=opts["batch_size"], lr=opts["lr"],
                          checkpoint_every=opts["checkpoint_every"], **config)
        evals = []
    if eval_every is not None and not (isinstance(eval_every, int) and eval_every >= 0):
        raise ValueError(f"`eval_every` must be a non-negative integer (0: never), got {eval_every!r}.")

    out.mkdir(parents=True, exist_ok=True)
    sde_ = make_sde(**spec["sde"])
    torch.manual_seed(cfg.seed)  # the initial weights
    net = build_model(spec["model"])
    evaluate = _evaluator(spec, sde_) if eval_every else None
    t0 = time.perf_counter()
    result = train(net, sde_, train_data.x, cfg, labels=train_data.labels if getattr(net, "n_classes", None) else None, out=out,
                   resume=resume, progress=progress, evaluate=evaluate, eval_every=eval_every or None, evals=evals,
                   extra={"run": spec}, log_eval=log, on_checkpoint=lambda state: _write_description(out, state))
    seconds = time.perf_counter() - t0
    run = Run.load(out)
    plot_losses(run, out / "losses.png")
    tail = np.mean(result["losses"][-200:]) if result["losses"] else math.nan
    log(f"trained {spec['data']} for {result['step']} steps ({seconds:.1f} s this session); final loss {tail:.4f}; "
        f"wrote {out / CHECKPOINT}, {out / RUN_FILE}, {out / 'losses.png'}")
    return run


def _say(text: str) -> None:
    print(text, flush=True)


def _evaluator(spec: dict, sde: DiffusionSDE) -> Callable:
    """Held-out evaluation during training: the DSM loss of the EMA network on held-out data (the same noise
    at every evaluation, so successive values are comparable), and for 2-D data the sliced Wasserstein
    distance of 2,000 quick samples (dpmpp_2m, 20 log-SNR steps) to held-out data, over its noise floor."""
    name, seed = spec["data"], spec["data_seed"] + 1
    held = datasets.load(name, None if name == "digits" else 2000, seed=seed, split="test")
    x = torch.as_tensor(held.x, dtype=torch.float32)
    y = None if held.labels is None else torch.as_tensor(held.labels)
    two_d = held.dim == 2
    floor = metrics.noise_floor(lambda m, s: datasets.load(name, m, seed=s).x, len(held.x), pairs=4) if two_d else None

    def evaluate(step: int, net) -> dict:
        gen = torch.Generator().manual_seed(seed)
        labels = y if getattr(net, "n_classes", None) else None
        with torch.no_grad():
            loss = float(sum(dsm_loss(net, sde, x, y=labels, generator=gen) for _ in range(4)) / 4)
        out = {"step": step, "held_out_loss": loss}
        if two_d:
            s = sample(sde, as_score(net, sde), len(held.x), method="dpmpp_2m", steps=20, grid="logsnr", seed=seed)
            out["sliced_w1_ratio"] = metrics.sliced_wasserstein(_numpy(s.x), held.x) / floor.mean
        return out

    return evaluate


def _numpy(x):
    return x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)


# --------------------------------------------------------------------------- sampling and its evaluation
def sample_run(run: Run, *, method: str | None = None, steps: int | None = None, n: int = 1000, grid: str | None = None,
               seed: int = 0, label: int | None = None, guidance: float = 0.0, **kwargs):
    """``n`` samples of a run with ``method``; returns ``(x, labels, samples)``.

    ``method``, ``steps`` and ``grid`` default as in :func:`diffusion.sample` (without ``method``: the default
    sampler for the budget ``nfe=`` given in ``kwargs``, or ``DEFAULT_NFE``).

    Class-conditional runs sample class ``label``, or with ``label=None`` all
    classes in turn (``n`` split evenly, each with guidance weight
    ``guidance``). ``kwargs`` go to :func:`diffusion.sample`.
    """
    if method is not None and method not in METHODS:
        raise ValueError(f"unknown method {method!r}; choose one of {list(METHODS)}.")
    if not (isinstance(n, int) and n >= 1):
        raise ValueError(f"`n` must be a positive integer, got {n!r}.")
    number = isinstance(guidance, int | float | np.integer | np.floating) and not isinstance(guidance, bool)
    if not (number and math.isfinite(guidance) and guidance >= 0):
        raise ValueError(f"`guidance` must be a non-negative number, got {guidance!r}.")
    if guidance and not run.conditional:
        raise ValueError(f"--guidance {guidance:g} needs a class-conditional run (classifier-free guidance mixes the "
                         "conditional and unconditional scores); this run's network is unconditional: drop --guidance, "
                         "or train with --conditional.")
    if run.conditional and label is None:
        k = run.net.n_classes
        counts = [n // k + (c < n % k) for c in range(k)]
        parts = [(c, m) for c, m in enumerate(counts) if m]
    else:
        parts = [(label, n)]
    xs, ys, last, seconds = [], [], None, 0.0
    for j, (c, m) in enumerate(parts):
        score = run.score(c, guidance) if c is not None else run.score()
        last = sample(run.sde, score, m, method=method, steps=steps, grid=grid, seed=seed + 7919 * j, **kwargs)
        xs.append(_numpy(last.x))
        ys.append(np.full(m, -1 if c is None else c))
        seconds += last.seconds
    last.seconds = seconds
    return np.concatenate(xs), np.concatenate(ys), last


_CLASSIFIER = {}


def digit_classifier():
    """A logistic-regression classifier fitted on the real training digits; returns ``(model, test_accuracy)``."""
    if "digits" not in _CLASSIFIER:
        LogisticRegression = require("sklearn.linear_model", extra="diffusion", what="the digit classifier").LogisticRegression
        tr, te = datasets.load("digits", split="train"), datasets.load("digits", split="test")
        clf = LogisticRegression(max_iter=5000, C=0.1).fit(tr.x, tr.labels)
        _CLASSIFIER["digits"] = (clf, float(clf.score(te.x, te.labels)))
    return _CLASSIFIER["digits"]


@functools.lru_cache(maxsize=64)
def _floor(name: str, n: int, metric: str) -> tuple:
    """Noise floor of ``metric`` for ``n`` points of toy set ``name`` (8 pairs; deterministic, so cached)."""
    floor = metrics.noise_floor(lambda m, s: datasets.load(name, m, seed=s).x, n, metric=metric, pairs=8)
    return floor.mean, floor.std


def evaluate_samples(run: Run, x, labels=None, *, seed: int = 0) -> dict:
    """Scores of samples ``x`` against held-out data.

    2-D data: sliced Wasserstein-1 (256 directions) and sliced KS (64) to a
    held-out sample of the same size, each with its noise floor (the same
    distance between two independent data samples of that size, mean over 8
    pairs) and the ratio. Digits with class labels: the accuracy of a
    logistic-regression classifier fitted on the real digits (and its own
    accuracy on held-out real digits, the ceiling).
    """
    x = np.asarray(x, dtype=np.float64)
    out: dict = {"n": len(x)}
    bad = int(np.sum(~np.all(np.isfinite(x), axis=1)))
    if bad:
        raise FloatingPointError(f"{bad} of {len(x)} samples are not finite; use more steps or another method.")
    if x.shape[1] == 2:
        name = run.data
        held = run.held_out(len(x), seed=1000 + seed).x
        for key, fn in (("sliced_w1", metrics.sliced_wasserstein), ("sliced_ks", metrics.sliced_ks)):
            floor_mean, floor_std = _floor(name, len(x), key.replace("w1", "wasserstein"))
            value = fn(x, held)
            out[key] = value
            out[key + "_floor"] = floor_mean
            out[key + "_floor_std"] = floor_std
            out[key + "_ratio"] = value / floor_mean
    if run.data == "digits" and labels is not None and np.all(np.asarray(labels) >= 0):
        clf, ceiling = digit_classifier()
        pred = clf.predict(np.clip(x, -1.0, 1.0))
        out["accuracy"] = float(np.mean(pred == np.asarray(labels)))
        out["accuracy_se"] = math.sqrt(out["accuracy"] * (1 - out["accuracy"]) / len(x))
        out["classifier_test_accuracy"] = ceiling
    return out


# --------------------------------------------------------------------------- likelihood
def likelihood_run(run: Run, *, n: int | None = None, divergence: str | None = None, n_probes: int = 4,
                   rtol: float = 1e-5, atol: float = 1e-5, seed: int = 0, batch: int = 500) -> dict:
    """Held-out log-likelihood through the probability-flow ODE.

    ``n`` held-out points (default: the 297 test digits, or 1,000 points of a
    toy set), ``divergence`` ``"exact"`` (default for 2-D) or ``"hutchinson"``
    with ``n_probes`` probes (default for images). Returns mean negative
    log-likelihood in nats with its standard error over the points, the
    Hutchinson part of that error, bits per dimension (dequantised digits:
    with the bin width, the usual discrete bits/dim), and for toy sets with a
    closed-form density the exact data entropy and the KL estimate.
    """
    if n is not None and (isinstance(n, bool) or not isinstance(n, int) or n < 2):
        raise ValueError(f"`n` (--n) must be an integer >= 2 held-out points (a standard error needs two), got {n!r}.")
    held = run.held_out(n if n is not None or run.data == "digits" else 1000, seed=seed)
    div = divergence or ("exact" if held.dim <= 8 else "hutchinson")
    batch_log_probs, batch_stderrs = [], []
    t0 = time.perf_counter()
    for lo in range(0, len(held.x), batch):
        lik = log_likelihood(run.sde, run.score(), held.x[lo:lo + batch], divergence=div,
                             n_probes=n_probes if div == "hutchinson" else 1, rtol=rtol, atol=atol,
                             seed=seed + lo)
        batch_log_probs.append(np.asarray(lik.log_prob))
        if lik.stderr is not None:
            batch_stderrs.append(np.asarray(lik.stderr))
    log_probs = np.concatenate(batch_log_probs)
    m, dim = len(log_probs), held.dim
    out = {"n": m, "dim": dim, "divergence": div, "seconds": time.perf_counter() - t0,
           "nll": float(-log_probs.mean()), "nll_se": float(log_probs.std(ddof=1) / math.sqrt(m)) if m > 1 else math.nan}
    if batch_stderrs:
        out["nll_hutchinson_se"] = float(math.sqrt(np.sum(np.concatenate(batch_stderrs) ** 2)) / m)
    bin_width = held.bin_width or 1.0
    out["bits_per_dim"] = float((out["nll"] - dim * math.log(bin_width)) / (dim * math.log(2)))
    out["bits_per_dim_se"] = out["nll_se"] / (dim * math.log(2))
    if "nll_hutchinson_se" in out:
        out["bits_per_dim_hutchinson_se"] = out["nll_hutchinson_se"] / (dim * math.log(2))
    exact = datasets.log_prob(run.data, held.x) if dim == 2 else None
    if exact is not None:
        gap = exact - log_probs
        out["data_entropy"] = float(-exact.mean())
        out["kl"] = float(gap.mean())
        out["kl_se"] = float(gap.std(ddof=1) / math.sqrt(m))
    return out


# --------------------------------------------------------------------------- plots
def _plt():
    matplotlib = require("matplotlib", extra="diffusion", what="the plots of diffusion's runs")
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_losses(run: Run, path) -> None:
    """Training loss (raw and smoothed) and the held-out evaluations against step."""
    plt = _plt()
    evals = [e for e in run.evals if "held_out_loss" in e]
    fig, axes = plt.subplots(1, 2 if evals else 1, figsize=(11 if evals else 6, 4), squeeze=False)
    ax = axes[0, 0]
    y = np.asarray(run.losses)
    if len(y):
        ax.plot(np.arange(1, len(y) + 1), y, lw=0.4, alpha=0.35, label="batch loss")
        k = max(1, min(200, len(y) // 20))
        if len(y) >= k:
            running_mean = np.convolve(y, np.ones(k) / k, mode="valid")
            ax.plot(np.arange(k, len(y) + 1), running_mean, lw=1.5, label=f"mean of {k}")
        lo, hi = np.percentile(y, [0.5, 99])
        ax.set_ylim(lo * 0.95, hi * 1.05)
    ax.set_xlabel("step")
    ax.set_ylabel("training loss")
    ax.set_title(f"{run.data}: {run.spec['model']['kind']}, {run.config.loss} loss")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    if evals:
        ax = axes[0, 1]
        steps = [e["step"] for e in evals]
        ax.plot(steps, [e["held_out_loss"] for e in evals], "o-", label="held-out loss (EMA)")
        ax.set_xlabel("step")
        ax.set_ylabel("held-out loss")
        ax.grid(alpha=0.3)
        if any("sliced_w1_ratio" in e for e in evals):
            ax2 = ax.twinx()
            ax2.plot(steps, [e.get("sliced_w1_ratio", math.nan) for e in evals], "s--", color="C1",
                     label="sliced W1 / noise floor")
            ax2.axhline(1.0, color="C1", lw=0.8, alpha=0.5)
            ax2.set_ylabel("sliced W1 / noise floor")
            ax2.legend(fontsize=8, loc="upper right")
        ax.legend(fontsize=8, loc="upper left")
        ax.set_title("evaluation on held-out data")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_samples(run: Run, x, path, *, labels=None, title: str = "") -> None:
    """2-D: held-out data and samples as scatter plots, and the samples' density; images: a grid."""
    plt = _plt()
    x = np.asarray(x)
    if run.spec.get("image_shape"):
        c, size, _ = run.spec["image_shape"]
        if run.conditional and labels is not None and np.all(labels >= 0):
            k = run.net.n_classes
            per = min(np.bincount(labels.astype(int), minlength=k))
            per = max(1, min(per, 12))
            rows = [x[labels == c_][:per] for c_ in range(k)]
            ncol = per
        else:
            ncol = min(12, int(math.ceil(math.sqrt(len(x)))))
            rows = [x[i:i + ncol] for i in range(0, min(len(x), ncol * ncol), ncol)]
        fig, axes = plt.subplots(len(rows), ncol, figsize=(0.8 * ncol, 0.8 * len(rows) + 0.5), squeeze=False)
        for i, row in enumerate(rows):
            for j in range(ncol):
                ax = axes[i, j]
                ax.axis("off")
                if j < len(row):
                    ax.imshow(np.clip(row[j].reshape(size, size), -1, 1), cmap="gray_r", vmin=-1, vmax=1)
        fig.suptitle(title, fontsize=9)
        fig.tight_layout()
    else:
        held = run.held_out(len(x), seed=1000).x
        lim = np.percentile(np.abs(np.r_[held, x]), 99.5) * 1.1
        fig, axes = plt.subplots(1, 3, figsize=(13, 4.3))
        for ax, pts, name in ((axes[0], held, "held-out data"), (axes[1], x, "samples")):
            ax.scatter(pts[:, 0], pts[:, 1], s=1.5, alpha=0.35, lw=0)
            ax.set_title(f"{name} (n={len(pts)})", fontsize=10)
        axes[2].hist2d(x[:, 0], x[:, 1], bins=120, range=[[-lim, lim], [-lim, lim]], cmap="magma")
        axes[2].set_title("sample density", fontsize=10)
        for ax in axes:
            ax.set_xlim(-lim, lim)
            ax.set_ylim(-lim, lim)
            ax.set_aspect("equal")
        fig.suptitle(title, fontsize=10)
        fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)

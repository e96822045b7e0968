"""The base install (no extras): sdekit and diffusion import and solve without torch, matplotlib or scikit-learn,
and what needs one of them names the extra that installs it (``sdekit.checks.require``).

Each test runs a fresh interpreter in which those packages cannot be imported (a meta-path finder answers
"No module named ..." for them, as an interpreter without them does) and reports what it saw as JSON.
"""

import json
import math
import os
import subprocess
import sys
import textwrap

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXTRAS_MODULES = ("torch", "matplotlib", "sklearn")

_BLOCK = f"""
import json, sys

class _NotInstalled:
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in {EXTRAS_MODULES!r}:
            raise ModuleNotFoundError(f"No module named {{name!r}}", name=name)
        return None

sys.meta_path.insert(0, _NotInstalled())
"""


def _run_without_extras(code: str) -> dict:
    """Run ``code`` (which prints one JSON object last) where the extras' packages are not importable."""
    proc = subprocess.run([sys.executable, "-c", _BLOCK + textwrap.dedent(code)], cwd=ROOT, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_base_install_solves_and_samples():
    theta, mu, sigma, x0, n_steps, n_paths = 1.0, 0.5, 0.3, 2.0, 50, 20_000
    out = _run_without_extras(f"""
        import numpy as np
        import sdekit as sk
        import diffusion as df

        ou = sk.SDE(lambda t, x, p: p[0] * (p[1] - x), lambda t, x, p: p[2], noise="additive",
                    params=({theta}, {mu}, {sigma}))
        ends = {{}}
        for backend in ("numpy", "numba"):
            sol = sk.solve(ou, x0={x0}, t_span=(0.0, 1.0), method="euler", n_steps={n_steps}, n_paths={n_paths},
                           seed=7, save_at=[1.0], backend=backend)
            ends[backend] = sol.x[-1, :, 0]
        # two well separated modes with weights 0.3 / 0.7: the sampler must put 70% of the samples right of 0
        sde = df.VPSDE()
        gm = df.GaussianMixture([0.3, 0.7], [[-2.0, 0.0], [2.0, 0.0]], [0.1, 0.1])
        r = df.sample(sde, gm.score_fn(sde), 400, method="ddim", steps=10, seed=0, backend="numba")
        x = np.asarray(r.x)
        print(json.dumps(dict(
            mean=float(ends["numpy"].mean()), sd=float(ends["numpy"].std(ddof=1)),
            numba_minus_numpy=float(np.abs(ends["numba"] - ends["numpy"]).max()),
            sample_shape=list(x.shape), sample_finite=bool(np.isfinite(x).all()), right_of_zero=float((x[:, 0] > 0).mean()),
            loaded=sorted(m for m in {EXTRAS_MODULES!r} if m in sys.modules))))
    """)
    assert out["loaded"] == []
    # Euler-Maruyama on linear drift and additive noise: E X_N = mu + (x0 - mu) (1 - theta h)^N exactly
    h = 1.0 / n_steps
    exact_mean = mu + (x0 - mu) * (1 - theta * h) ** n_steps
    assert abs(out["mean"] - exact_mean) < 4 * out["sd"] / math.sqrt(n_paths)
    # the same seed reads the same Brownian path on both backends: the same states up to round-off
    assert out["numba_minus_numpy"] < 1e-12
    assert out["sample_shape"] == [400, 2] and out["sample_finite"]
    assert abs(out["right_of_zero"] - 0.7) < 4 * math.sqrt(0.7 * 0.3 / 400)


def test_what_needs_an_extra_names_it():
    out = _run_without_extras("""
        import contextlib, io
        import sdekit as sk
        import diffusion as df
        from sdekit.cli import main

        ou = sk.SDE(lambda t, x, p: -x, lambda t, x, p: 0.3, noise="additive")
        sde = df.VPSDE()
        score = df.GaussianMixture([1.0], [[0.0, 0.0]], [1.0]).score_fn(sde)
        asks = {
            "solve": lambda: sk.solve(ou, x0=1.0, t_span=(0.0, 1.0), method="euler", n_steps=4, backend="torch"),
            "brownian": lambda: sk.BrownianPath(seed=0).increments(4, device="cpu"),
            "stepper": lambda: sk.Stepper(ou, "euler", 1, backend="torch"),
            "sample": lambda: df.sample(sde, score, 10, method="ddim", steps=4, backend="torch"),
            "models": lambda: __import__("diffusion.models"),
            "plot": lambda: sk.report.plot(None, "unused.png"),
        }
        messages = {}
        for what, ask in asks.items():
            try:
                ask()
                messages[what] = None
            except ValueError as exc:
                messages[what] = [type(exc).__name__, isinstance(exc, ImportError), str(exc)]
        with contextlib.redirect_stderr(io.StringIO()) as err:
            demo_status = main(["demo", "--out", "unused"])
        print(json.dumps(dict(messages=messages, demo_status=demo_status, demo_error=err.getvalue())))
    """)
    extras = {"solve": "torch", "brownian": "torch", "stepper": "torch", "sample": "torch", "models": "diffusion",
              "plot": "plot"}
    for what, extra in extras.items():
        name, is_import_error, message = out["messages"][what]
        assert name == "MissingDependency" and is_import_error, what
        assert "\n" not in message and "not installed" in message, message
        assert message.endswith(f'pip install -c constraints.txt -e ".[{extra}]"'), message
    assert "backend='torch' needs torch" in out["messages"]["solve"][2]
    # the command line: one line on stderr naming the demo extra, exit status 2, before any work
    assert out["demo_status"] == 2
    assert out["demo_error"].count("\n") == 1 and 'sdekit demo: error: sdekit demo needs matplotlib' in out["demo_error"]
    assert out["demo_error"].rstrip().endswith('pip install -c constraints.txt -e ".[demo]"')

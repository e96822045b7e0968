"""The compile cache: adapters of a problem's functions are cached on disk, keyed on everything that decides their
code, so a later process loads them, and a change to what a function computes never loads stale code."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

import sdekit as sk
from sdekit import _codegen
from sdekit.backends import numba_adapters

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

THETA = 1.5


def _reads_theta(t, x, p):
    return -THETA * x


def test_fingerprint_follows_what_the_compiled_code_depends_on(monkeypatch):
    first = _codegen.fingerprint(_reads_theta)
    assert first is not None and first == _codegen.fingerprint(_reads_theta)
    monkeypatch.setattr(sys.modules[__name__], "THETA", 2.5)
    assert _codegen.fingerprint(_reads_theta) != first  # a global Numba freezes in
    # the same code typed again (a new lambda object) has the same fingerprint; other constants do not
    a, b, c = (eval("lambda t, x, p: p[0] * x + 0.5"), eval("lambda t, x, p: p[0] * x + 0.5"),
               eval("lambda t, x, p: p[0] * x + 0.25"))
    assert _codegen.fingerprint(a) == _codegen.fingerprint(b) != _codegen.fingerprint(c)

    def closure(scale):
        return lambda t, x, p: scale * x

    assert _codegen.fingerprint(closure(1.0)) != _codegen.fingerprint(closure(2.0))
    weights = np.array([1.0, 2.0])
    reads_array = lambda t, x, p: x * weights  # noqa: E731
    before = _codegen.fingerprint(reads_array)
    weights[1] = 3.0
    assert _codegen.fingerprint(reads_array) != before

    class Config:
        theta = 1.0

    cfg = Config()
    assert _codegen.fingerprint(lambda t, x, p: cfg.theta * x) is None  # not pinned down: compiled in memory


def test_a_helper_function_is_part_of_the_fingerprint():
    helper = sk.ops.jittable(eval("lambda x: 2.0 * x"))
    other = sk.ops.jittable(eval("lambda x: 3.0 * x"))
    uses = eval("lambda t, x, p: helper(x)", {"helper": helper, "__name__": __name__})
    uses_other = eval("lambda t, x, p: helper(x)", {"helper": other, "__name__": __name__})
    assert _codegen.fingerprint(uses) != _codegen.fingerprint(uses_other)


_SCRIPT = """
import json, sys
sys.path.insert(0, {folder!r})
import numpy as np
import sdekit as sk
from sdekit.backends import numba_adapters
import user_problem
problem = sk.SDE(user_problem.drift, user_problem.diffusion, noise="diagonal", params=(0.3,))
sol = sk.solve(problem, x0=1.0, t_span=(0.0, 1.0), method="euler", n_steps=16, n_paths=64, seed=5)
hits = sum(sum(d.stats.cache_hits.values()) for cache in numba_adapters._ADAPTERS.values() for d in cache.values())
print(json.dumps({{"mean": float(sol.x[-1].mean()), "hits": hits}}))
"""

_PROBLEM = """
THETA = {theta}

def drift(t, x, p):
    return -THETA * x

def diffusion(t, x, p):
    return p[0] + 0.0 * x
"""


def _run(folder, cache):
    env = dict(os.environ, SDEKIT_CACHE_DIR=str(cache))
    out = subprocess.run([sys.executable, "-c", _SCRIPT.format(folder=str(folder))], env=env, cwd=ROOT,
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_adapters_are_loaded_by_a_later_process_and_never_stale(tmp_path):
    """A later process loads the adapters from disk; after an edit of the user's module (a global it reads), the
    result follows the edit: the exact Euler mean x0 (1 - theta h)^N, with the noise's standard error."""
    folder, cache = tmp_path / "user", tmp_path / "cache"
    folder.mkdir()
    results = []
    for theta in (1.0, 1.0, 3.0):
        (folder / "user_problem.py").write_text(_PROBLEM.format(theta=theta))
        for name in os.listdir(folder):  # no stale bytecode of the edited module
            if name == "__pycache__":
                for f in os.listdir(folder / name):
                    os.remove(folder / name / f)
        results.append((theta, _run(folder, cache)))
    assert results[0][1]["hits"] == 0 and results[1][1]["hits"] == 2  # drift and diffusion loaded, not compiled
    assert results[2][1]["hits"] == 1  # the edited drift compiled again; the diffusion loaded
    for theta, result in results:
        exact = (1.0 - theta / 16) ** 16
        # the Euler scheme's mean is exact; the noise has variance < 0.3^2 (the decay shrinks it): 64 paths
        assert abs(result["mean"] - exact) < 5 * 0.3 / np.sqrt(64), (theta, result, exact)
    assert results[0][1]["mean"] == results[1][1]["mean"]


def test_a_damaged_adapter_file_is_written_again(tmp_path, monkeypatch):
    monkeypatch.setenv("SDEKIT_CACHE_DIR", str(tmp_path))
    drift = eval("lambda t, x, p: -p[0] * x + 0.125 * x")
    diffusion = eval("lambda t, x, p: 0.2 + 0.0 * x")
    problem = sk.SDE(drift, diffusion, noise="diagonal", params=(1.0,))
    first = sk.solve(problem, x0=1.0, t_span=(0.0, 1.0), method="euler", n_steps=8, n_paths=16, seed=1)
    folder = _codegen.cache_dir()
    files = [f for f in os.listdir(folder) if f.endswith(".py")]
    assert files
    for name in files:
        path = os.path.join(folder, name)
        with open(path, "r+") as fh:
            fh.truncate(os.path.getsize(path) // 2)
    numba_adapters._ADAPTERS.clear()
    again = sk.solve(sk.SDE(drift, diffusion, noise="diagonal", params=(1.0,)), x0=1.0, t_span=(0.0, 1.0),
                     method="euler", n_steps=8, n_paths=16, seed=1)
    np.testing.assert_array_equal(again.x, first.x)
    for name in files:
        with open(os.path.join(folder, name)) as fh:
            assert fh.read().rstrip().endswith("__sdekit_complete__ = True")


def test_an_unwritable_cache_folder_compiles_in_memory(tmp_path, monkeypatch):
    blocked = tmp_path / "file"
    blocked.write_text("not a folder")
    monkeypatch.setenv("SDEKIT_CACHE_DIR", str(blocked))
    assert _codegen.cache_dir() is None
    problem = sk.SDE(eval("lambda t, x, p: -p[0] * x + 0.0625 * x"), lambda t, x, p: 0.0 * x, noise="diagonal",
                     params=(1.0,))
    sol = sk.solve(problem, x0=1.0, t_span=(0.0, 1.0), method="euler", n_steps=4, n_paths=2, seed=1)
    np.testing.assert_allclose(sol.x[-1], (1.0 - 0.9375 / 4) ** 4)


@pytest.mark.parametrize("value, expected", [(lambda t, x, p: 2.0, 2.0), (lambda t, x, p: True, 1.0),
                                             (lambda t, x, p: np.full(x.shape[1], 3), 3.0),
                                             (lambda t, x, p: (x * 0.0 + 4.0)[:, ::-1], 4.0),
                                             (lambda t, x, p: np.ones((1, 1), dtype=np.float32), 1.0)])
def test_every_result_type_broadcasts(value, expected):
    """Numbers, booleans, integer and float32 arrays, and non-contiguous views all reach the kernels as float64."""
    problem = sk.ODE(value)
    sol = sk.solve(problem, x0=np.zeros(2), t_span=(0.0, 1.0), method="euler", n_steps=4)
    np.testing.assert_allclose(sol.x[-1, 0], [expected, expected])


def test_warmup_lists_every_kernel():
    from sdekit import warmup
    from sdekit.backends import numba_kernels

    names = [name for name, _ in warmup.warmup_items()]
    for step in numba_kernels.KERNEL_STEPS:
        assert any(name.startswith(step.__name__ + " step") for name in names)
    lines = []
    assert warmup.warmup(print_fn=lines.append) >= 0.0
    assert lines[0].startswith("sdekit warmup") and lines[-1].startswith("done in")


def test_warmup_command_line(capsys):
    from sdekit.cli import main

    assert main(["warmup"]) == 0
    out = capsys.readouterr().out
    assert "euler step (diagonal noise)" in out and "Brownian tree" in out and "done in" in out


def test_functions_of_unimportable_modules_are_not_disk_cached():
    """A lambda made by exec() under a module name Python cannot import (as docs runners do) would be pickled by
    Numba as a '<dynamic>' module's, which the next process cannot load: its adapter is compiled in memory."""
    from sdekit import _codegen

    namespace = {"__name__": "__not_a_module__"}
    exec("f = lambda t, x, p: -x", namespace)  # noqa: S102
    assert _codegen.fingerprint(namespace["f"]) is None
    assert _codegen.fingerprint(lambda t, x, p: -x) is not None  # this test module is importable


def test_a_function_with_extra_defaulted_parameters_is_refused_on_numba_in_one_line():
    """``lambda t, x, p, k=k: ...`` works where Python calls it (numpy) but Numba compiles three arguments only: a
    one-line error naming the function and the parameter, instead of Numba's "Mismatch number of argument types"."""
    k = 2.0
    problem = sk.SDE(lambda t, x, p, k=k: -k * x, lambda t, x, p: 0.1 + 0.0 * x, noise="diagonal")
    kw = dict(method="euler", n_steps=4, n_paths=2, seed=0)
    with pytest.raises(ValueError, match=r"^`drift` has parameters beyond \(t, x, p\): k; .*backend='numpy'\.$") as info:
        sk.solve(problem, 1.0, (0.0, 1.0), backend="numba", **kw)
    assert "\n" not in str(info.value)
    assert sk.solve(problem, 1.0, (0.0, 1.0), backend="numpy", **kw).success

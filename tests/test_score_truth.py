"""diffusion.Score against its formulas: the guidance combinations, parameters moved to torch, and the one-line checks
of what a score function returns."""

import numpy as np
import pytest
import torch

from diffusion import VPSDE, Score, classifier_guidance, sample
from diffusion.score import classifier_free_guidance, params_like

SDE = VPSDE()


def towards(t, x, p):
    """The score of N(m, I) (per row): ``m - x``."""
    return p[0] - x


def test_guidance_combinations_are_their_weighted_sums():
    """Classifier guidance ``s + w g`` (Dhariwal & Nichol 2021) and classifier-free guidance ``(1 + w) s_c - w s_u``
    (Ho & Salimans 2022, eq. 6), pointwise on numpy and torch inputs."""
    a = Score(towards, SDE, params=(np.array([1.0, -2.0]),), dim=2)
    b = Score(towards, SDE, params=(np.array([0.5, 3.0]),), dim=2)
    x = np.random.default_rng(0).normal(size=(5, 2))
    sa, sb = np.array([1.0, -2.0]) - x, np.array([0.5, 3.0]) - x
    for combined, expected in ((classifier_guidance(a, b, 2.5), sa + 2.5 * sb),
                               (classifier_free_guidance(a, b, 1.5), 2.5 * sa - 1.5 * sb)):
        np.testing.assert_allclose(combined.kernel(0.4, x, combined.params), expected, rtol=1e-14)
        xt = torch.as_tensor(x)
        got = combined.kernel(0.4, xt, params_like(combined.params, xt))
        np.testing.assert_allclose(got.numpy(), expected, rtol=1e-14)


def test_params_like_moves_arrays_to_the_tensor_and_keeps_the_rest():
    x = torch.zeros(2, 1, dtype=torch.float32)
    moved = params_like((np.array([1.0, 2.0]), 3.0, (np.array([4.0]), "name")), x)
    assert isinstance(moved[0], torch.Tensor) and moved[0].dtype == torch.float32
    assert moved[1] == 3.0 and isinstance(moved[1], float)
    assert isinstance(moved[2][0], torch.Tensor) and moved[2][1] == "name"
    assert params_like(moved, np.zeros((2, 1))) is moved  # NumPy inputs: unchanged


def test_a_score_on_every_backend_is_the_same_function():
    """A plain Python score runs on numba (compiled), numpy and torch with the same result."""
    score = Score(towards, SDE, params=(np.array([0.7, -0.3]),), dim=2)
    x_T = SDE.prior_sample(8, 2, seed=1)
    runs = [sample(SDE, score, 8, method="heun", steps=6, x_T=x_T, backend=b, denoise=False).x for b in ("numba", "numpy")]
    runs.append(sample(SDE, score, 8, method="heun", steps=6, x_T=torch.as_tensor(x_T), backend="torch", denoise=False).x)
    np.testing.assert_allclose(runs[0], runs[1], rtol=1e-13)
    np.testing.assert_allclose(np.asarray(runs[2]), runs[1], rtol=1e-13)


@pytest.mark.parametrize("to_tensor", [False, True])
def test_a_score_that_returns_nan_or_the_wrong_dimension_is_refused(to_tensor):
    nan = Score(lambda t, x, p: x * np.nan, SDE, dim=2)
    x = np.ones((4, 2))
    x = torch.as_tensor(x) if to_tensor else x
    with pytest.raises(ValueError, match="returned NaN or infinite values"):
        nan.check(x)
    with pytest.raises(ValueError, match=r"x_T has dimension 3 \(shape \(4, 3\)\) but the score .* is for dimension 2"):
        Score(towards, SDE, params=(np.zeros(2),), dim=2).check(np.ones((4, 3)), what="x_T")

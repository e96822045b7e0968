"""diffusion: score-based generative models sampled with sdekit's integrators.

Public API::

    VPSDE, SubVPSDE, VESDE        forward processes (marginals, prior, log-SNR conversions)
    Score                         a score function in any parameterisation (score / eps / x0 / v)
    classifier_guidance, classifier_free_guidance
    GaussianMixture               exact oracle: density, score, Laplacian, Tweedie mean, class terms
    TimeGrid, time_grid           uniform / quadratic / log-SNR / Karras grids
    reverse_sde, probability_flow, probability_flow_semilinear   reverse dynamics as sdekit problems
    sample, Samples, METHODS      sampling with any integrator
    Ancestral, Exponential, PredictorCorrector, AnnealedLangevin, Adaptive, METHOD_OPTIONS
                                  option records of the sampler families (sample(..., options=...))
    log_likelihood, bits_per_dim, dequantize

Submodules: ``diffusion.formulas`` (reverse drift, flow velocity, x0/eps predictions, d lambda/dt,
written once), ``diffusion.models`` (score networks), ``diffusion.training`` (losses, EMA,
training loop with checkpoints), ``diffusion.datasets`` (toy sets and the digits).
"""

from .grids import GRIDS, TimeGrid, time_grid
from .likelihood import Likelihood, bits_per_dim, dequantize, log_likelihood
from .options import Adaptive, Ancestral, AnnealedLangevin, Exponential, PredictorCorrector
from .oracle import GaussianMixture
from .reverse import probability_flow, probability_flow_semilinear, reverse_sde
from .sampling import METHOD_OPTIONS, METHODS, Samples, list_methods, sample
from .score import PARAMETERISATIONS, Score, classifier_free_guidance, classifier_guidance, convert
from .sdes import VESDE, VPSDE, DiffusionSDE, SubVPSDE

__all__ = [
    "VPSDE", "SubVPSDE", "VESDE", "DiffusionSDE", "Score", "PARAMETERISATIONS", "convert", "classifier_guidance",
    "classifier_free_guidance", "GRIDS", "TimeGrid", "time_grid", "reverse_sde", "probability_flow",
    "probability_flow_semilinear", "sample", "Samples", "METHODS", "list_methods",
    "METHOD_OPTIONS", "Ancestral", "Exponential", "PredictorCorrector", "AnnealedLangevin", "Adaptive",
    "log_likelihood", "Likelihood", "bits_per_dim", "dequantize", "GaussianMixture",
]

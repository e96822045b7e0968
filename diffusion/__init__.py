"""diffusion: score-based generative models sampled with sdekit's integrators.

Public API::

    VPSDE, SubVPSDE, VESDE        forward processes (marginals, prior, log-SNR conversions)
    FlowMatching, RectifiedFlow   interpolants x_t = alpha_t x0 + sigma_t eps as forward processes (flow matching)
    Score                         a score function in any parameterisation (score / eps / x0 / v)
    classifier_guidance, classifier_free_guidance
    GaussianMixture               exact oracle: density, score, Laplacian, Tweedie mean, class terms
    TimeGrid, time_grid           uniform / quadratic / log-SNR / Karras grids
    reverse_sde, probability_flow, probability_flow_semilinear   reverse dynamics as sdekit problems
    sample, Samples, METHODS      sampling with any integrator
    Ancestral, Exponential, PredictorCorrector, AnnealedLangevin, Adaptive, AncestralSDE, Churn, METHOD_OPTIONS
                                  option records of the sampler families (sample(..., options=...))
    log_likelihood, bits_per_dim, dequantize
    SdekitScheduler, DiscreteVPSDE  diffusers models: a diffusers-compatible scheduler, the discrete-time VP process
                                  (with Score.from_diffusers / Score.from_k_diffusion; diffusion.adapters)

Submodules: ``diffusion.formulas`` (reverse drift, flow velocity, x0/eps predictions, d lambda/dt,
written once), ``diffusion.models`` (score networks), ``diffusion.training`` (losses, EMA,
training loop with checkpoints), ``diffusion.datasets`` (toy sets and the digits).
"""

from .adapters import DiscreteVPSDE, SdekitScheduler
from .flow import FlowMatching, RectifiedFlow
from .grids import GRIDS, TimeGrid, time_grid
from .likelihood import Likelihood, bits_per_dim, dequantize, log_likelihood
from .options import Adaptive, Ancestral, AncestralSDE, AnnealedLangevin, Churn, Exponential, PredictorCorrector
from .oracle import GaussianMixture
from .reverse import probability_flow, probability_flow_semilinear, reverse_sde
from .sampling import DEFAULT_NFE, METHOD_OPTIONS, METHODS, Samples, default_sampler, list_methods, sample
from .score import PARAMETERISATIONS, Score, classifier_free_guidance, classifier_guidance, convert
from .sdes import VESDE, VPSDE, DiffusionSDE, SubVPSDE

__all__ = [
    "VPSDE", "SubVPSDE", "VESDE", "DiffusionSDE", "FlowMatching", "RectifiedFlow", "Score", "PARAMETERISATIONS", "convert",
    "classifier_guidance",
    "classifier_free_guidance", "GRIDS", "TimeGrid", "time_grid", "reverse_sde", "probability_flow",
    "probability_flow_semilinear", "sample", "Samples", "METHODS", "list_methods", "default_sampler", "DEFAULT_NFE",
    "METHOD_OPTIONS", "Ancestral", "Exponential", "PredictorCorrector", "AnnealedLangevin", "Adaptive",
    "AncestralSDE", "Churn",
    "log_likelihood", "Likelihood", "bits_per_dim", "dequantize", "GaussianMixture", "SdekitScheduler", "DiscreteVPSDE",
]

"""diffusion: score-based generative models on sdekit (VP / sub-VP / VE SDEs, samplers).

The samplers arrive in a later release; this package uses sdekit only through
its public API.
"""

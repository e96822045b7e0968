"""``python -m diffusion train|sample|likelihood`` (see :mod:`diffusion.cli`)."""

import sys

from .cli import main

sys.exit(main())

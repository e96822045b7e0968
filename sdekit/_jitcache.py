"""Numba's on-disk cache for sdekit's own kernels: keyed on every source a kernel compiles in, and self-healing.

Numba keys a cached function on the modification time and size of the one file
that defines it. sdekit's kernels inline code from other files (the steps of
every scheme, the adaptive integrator, the Brownian tree and its generator), so
an edit to one of those alone would leave Numba loading the old machine code: a
silent wrong answer. :func:`heal_cache` therefore adds a digest of all those
sources to the cache's stamp (an entry written under other sources is stale and
compiled again), and makes an unreadable entry (a truncated ``.nbi``/``.nbc``
file, say from an interrupted write) be discarded and compiled again instead of
failing every later call, or an entry compiled for another signature (two
processes saving entries at once can pair an index line with another entry's
data) be discarded instead of run.

The first time a process compiles one of sdekit's own kernels instead of
loading it, it prints a one-line notice to stderr: that happens once per
installation (``sdekit warmup`` does it ahead of time, e.g. in a container's
build step).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import sys
import warnings

import numba
import numba.core.caching

__all__ = ["KERNEL_SOURCES", "compile_notice", "heal_cache", "heal_module", "source_digest"]

_HERE = os.path.dirname(os.path.abspath(__file__))
# Every file whose code a cached sdekit kernel compiles in (relative to the package).
KERNEL_SOURCES = (
    "_rng.py", "_bridge.py", "_cursor.py", "schemes/_steps.py", "schemes/_adaptive.py", "backends/numba_kernels.py",
    "backends/numba_backend.py", "backends/numba_adapters.py", "ops.py", "schemes/_stability.py", "schemes/_rosenbrock.py",
    "backends/rosenbrock.py", "schemes/_paths.py", "schemes/_embedded.py", "backends/paths.py",
)


def source_digest(paths) -> str:
    """A digest of the contents of ``paths`` (a missing file counts as empty)."""
    h = hashlib.blake2b(digest_size=16)
    for p in paths:
        h.update(os.path.basename(p).encode())
        try:
            with open(p, "rb") as fh:
                h.update(fh.read())
        except OSError:
            h.update(b"<missing>")
    return h.hexdigest()


DIGEST = source_digest([os.path.join(_HERE, p) for p in KERNEL_SOURCES])


class _HealingCache(numba.core.caching.FunctionCache):
    """Numba's per-function disk cache, which discards an unreadable or mismatched entry and recompiles."""

    _warned: set = set()
    notice = False

    def load_overload(self, sig, target_context):
        try:
            cres = super().load_overload(sig, target_context)
        except Exception as exc:  # noqa: BLE001 - any unreadable entry is discarded and recompiled
            self._discard(exc)
            return None
        args = tuple(getattr(sig, "args", sig))
        if cres is not None and tuple(cres.signature.args) != args:
            self._discard(ValueError(f"the entry for {args} holds code for {tuple(cres.signature.args)}"))
            return None
        if cres is None and self.notice:
            compile_notice()
        return cres

    def _discard(self, exc):
        cf = self._cache_file
        stem = cf._index_name[: -len(".nbi")]
        for name in os.listdir(self._cache_path):
            if name == cf._index_name or (name.startswith(stem + ".") and name.endswith(".nbc")):
                with contextlib.suppress(OSError):
                    os.remove(os.path.join(self._cache_path, name))
        if self._name not in self._warned:
            self._warned.add(self._name)
            warnings.warn(
                f"sdekit: Numba's cache of {self._py_func.__qualname__} in {self._cache_path} was unreadable "
                f"({type(exc).__name__}: {exc}); discarded it and compiling again.", RuntimeWarning, stacklevel=2,
            )


class _NoticedCache(_HealingCache):
    """:class:`_HealingCache` of one of sdekit's own kernels: a miss prints the one-time compile notice."""

    notice = True


_NOTICE = ("sdekit: compiling Numba kernels for this machine, once per installation (cached on disk; "
           "`sdekit warmup` compiles them all ahead of time)...")
_noticed = False


def compile_notice() -> None:
    """Print :data:`_NOTICE` to stderr, once per process."""
    global _noticed
    if not _noticed and not os.environ.get("SDEKIT_QUIET"):
        _noticed = True
        print(_NOTICE, file=sys.stderr, flush=True)


def heal_cache(dispatcher, notice: bool = False):
    """Make a ``cache=True`` dispatcher self-healing and stamp its entries with :data:`DIGEST`.

    ``notice``: a cache miss prints the one-time compile notice (sdekit's own kernels).
    """
    cache = getattr(dispatcher, "_cache", None)
    if type(cache) is numba.core.caching.FunctionCache:
        cache.__class__ = _NoticedCache if notice else _HealingCache
        stamp = cache._cache_file._source_stamp
        cache._cache_file._source_stamp = (stamp, DIGEST)
    return dispatcher


def heal_module(module) -> None:
    """:func:`heal_cache` (with the compile notice) on every Numba dispatcher defined in ``module``."""
    for v in vars(module).values():
        if isinstance(v, numba.core.dispatcher.Dispatcher):
            heal_cache(v, notice=True)

"""calibrated-qa: a verifiers environment that rewards calibrated YES/NO probabilities on BoolQ.

One package, two adapters over the same pure core, each exported only where the installed
verifiers has its API:

- ``load_environment`` (``environment.py``), the classic API: verifiers 0.1.x to 0.3.x, the
  prime-rl of March 2026 (the pinned stack);
- ``CalibratedQATaskset`` and ``GenerationLogEnv`` (``taskset.py``), the v1 API: verifiers
  0.3.x and 0.4.x, today's prime-rl, which loads the taskset by id and takes the one ``Taskset``
  and the one ``Env`` subclass that ``__all__`` names (``verifiers/v1/utils/loaders.py``).

Which API exists is read from verifiers' subpackages without importing verifiers, and every
export is resolved on first access, so the pure modules (parsing, reward, records) and the
analysis import without pulling in verifiers; verifiers still sees the real objects.
"""

from importlib.util import find_spec
from pkgutil import iter_modules


def _verifiers_subpackages() -> frozenset[str]:
    spec = find_spec("verifiers")
    if spec is None or spec.submodule_search_locations is None:
        return frozenset()
    return frozenset(module.name for module in iter_modules(spec.submodule_search_locations))


_HAS = _verifiers_subpackages()
# Classic: 0.1.x has it at the top level (verifiers.envs), 0.2.x and 0.3.x as verifiers.legacy.
CLASSIC_API = "envs" in _HAS or "legacy" in _HAS
V1_API = "v1" in _HAS

_CLASSIC_EXPORTS = ("load_environment",) if CLASSIC_API else ()
_V1_EXPORTS = ("CalibratedQATaskset", "GenerationLogEnv") if V1_API else ()
__all__ = ["__version__", *_CLASSIC_EXPORTS, *_V1_EXPORTS]


def __getattr__(name: str) -> object:
    if name in _CLASSIC_EXPORTS:
        from calibrated_qa import environment

        return getattr(environment, name)
    if name in _V1_EXPORTS:
        from calibrated_qa import taskset

        return getattr(taskset, name)
    if name == "__version__":
        from importlib.metadata import PackageNotFoundError, version

        try:
            return version("calibrated-qa")
        except PackageNotFoundError:  # a source tree that was never installed
            return "0+unknown"
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

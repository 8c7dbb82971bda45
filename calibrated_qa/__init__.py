"""calibrated-qa: a verifiers environment that rewards calibrated YES/NO probabilities on BoolQ.

``load_environment`` is resolved on first access so that the pure modules (parsing, reward,
records) and the analysis import without pulling in verifiers; verifiers still sees the real
function, with its real signature, when it looks the attribute up.
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("calibrated-qa")
except PackageNotFoundError:  # pragma: no cover - a source tree that was never installed
    __version__ = "0+unknown"

__all__ = ["__version__", "load_environment"]


def __getattr__(name: str):
    if name == "load_environment":
        from calibrated_qa.environment import load_environment

        return load_environment
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

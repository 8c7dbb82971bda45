"""calibrated-qa: a verifiers environment that rewards calibrated YES/NO probabilities on BoolQ.

``load_environment`` and ``__version__`` are resolved on first access, so the pure modules
(parsing, reward, records) and the analysis import without pulling in verifiers or package
metadata; verifiers still sees the real function, with its real signature, when it looks it up.
"""

__all__ = ["__version__", "load_environment"]


def __getattr__(name: str) -> object:
    if name == "load_environment":
        from calibrated_qa.environment import load_environment

        return load_environment
    if name == "__version__":
        from importlib.metadata import PackageNotFoundError, version

        try:
            return version("calibrated-qa")
        except PackageNotFoundError:  # a source tree that was never installed
            return "0+unknown"
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

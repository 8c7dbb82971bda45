"""The CPU dry run: the whole pipeline against a real model server, without a GPU.

A tiny randomly initialised Gemma 2 (``build``) is served by ``transformers serve`` (``server``),
behind a proxy that records what the server received (``proxy``); the calibrated-qa environment
runs through verifiers' OpenAI chat-completions client against it and the analysis reads the log
(``run``). ``dry_run.py`` at the repository root is the command line.

This package imports torch and transformers; it lives outside ``calibrated_qa`` so that the
environment package installed into prime-rl's venv stays light.
"""

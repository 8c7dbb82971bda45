"""The CPU dry run: the whole pipeline without a GPU, driven as prime-rl 6cae5cca drives it.

``build``: a tiny random Gemma 2; ``server``: the part of vLLM's OpenAI API prime-rl uses, on it;
``orchestrator``: prime-rl's env servers, sampling args, scheduling and eval rounds. ``dry_run.py``
at the repository root is the command line. Outside ``calibrated_qa`` so that the environment
package installed into prime-rl's venv stays light (this one imports torch and transformers).
"""

"""The CPU dry run's parts: the tiny model (``build``, ``server``) and prime-rl's side."""

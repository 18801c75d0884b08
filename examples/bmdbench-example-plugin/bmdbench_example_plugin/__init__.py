"""An example bmdbench plug-in: the ``huber`` method (entry point in pyproject.toml)."""

"""Project-wide test setup (the pytester plugin is enabled in pyproject's addopts)."""

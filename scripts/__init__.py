"""Tools beside the container: setup, fixtures and demo cases, model export and benchmarks; run as
`.venv/bin/python -m scripts.NAME` from the repository root."""

"""Benchmarks (run from the repository root, e.g. ``python -m bench.transition_path``).

Every figure is a ratio against a baseline doing the same work, measured in the same run with
interleaved rounds: the machines are shared and noisy. See ``BENCHMARKS.md``.
"""

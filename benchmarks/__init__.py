"""Reproducible benchmarks; run them with ``python -m benchmarks.run [name ...]``.

Results are appended to ``benchmarks/RESULTS.md``; profiles of the last run are kept in
``benchmarks/profiles/``; generated inputs are cached in ``benchmarks/data/`` (gitignored).
"""

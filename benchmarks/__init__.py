"""fedvault's benchmarks: figures measured side by side, printed as ratios.

Not part of the test suite. Run ``python -m benchmarks --quick`` (a few minutes on 2
cores) or ``python -m benchmarks`` (full sizes); results go to
``benchmarks/results.json`` and ``docs/benchmarks.md`` is regenerated from them.
"""

"""Benchmark building blocks, typed and tested with the package: learning-curve statistics (``curves``),
rliable aggregates (``aggregates``), and what a run records besides its returns (``recording``: episode
returns and route shares, forward FLOPs). The scripts in ``benchmarks/`` are thin drivers around them.
"""

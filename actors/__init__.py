"""Ray actors: thin shells that hold state and call the pure maths in :mod:`eraser_dist`.

Planned members (see the design card, DESIGN.md §2): a worker group (k ranks holding one
ZeRO-3-partitioned base over a data shard: gradient sums, HVP sums, per-id losses), an
aggregator (distributed CG over the groups) and a serving replica (applies adapter deltas).
Each calls ``eraser_dist.objective``, ``eraser_dist.curvature`` and ``eraser_dist.solve``;
no maths lives here.
"""

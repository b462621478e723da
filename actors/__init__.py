"""Ray actors: thin shells that hold state and call the pure maths in :mod:`eraser_dist`.

- ``worker``: one rank of a worker group: a ``ShardWorker``
  (:mod:`eraser_dist.distributed.shard_worker`) in a Ray actor, joined to its group's
  torch.distributed group;
- ``group``: k ranks sharing one ZeRO-3-partitioned base, the restart-and-retry pool of G
  groups, and that pool as a curvature back-end;
- ``aggregator``: runs the Newton step of :mod:`eraser_dist.core.influence` on the pool,
  checkpointing CG every iteration;
- ``driver``: places the aggregator and follows it; ``cluster``: connects to Ray or starts it;
- ``replica``: a serving copy of an adapter that applies published deltas.

See docs/DESIGN.md §4.
"""

"""The distributed engine's Ray-free parts: the DeepSpeed ZeRO-3 edge, which rank works on which
rows, what one rank computes, CG checkpoints, and the capacity plan (docs/DESIGN.md §4)."""

"""The maths of an erase as pure functions over tensors: the objective, HVPs, CG, requests
and the one Newton-step pipeline over a curvature back-end (docs/DESIGN.md §1–3). Nothing here
imports Ray, DeepSpeed, transformers or peft."""

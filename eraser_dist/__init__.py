"""eraser_dist: influence-function unlearning for LoRA adapters."""

"""LLM specifics: base models, LoRA as a LossModel, adapters on disk, tokenisation, training."""

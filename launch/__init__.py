"""Entry points for cluster jobs (``ray job submit --working-dir . -- python -m launch.X``)."""

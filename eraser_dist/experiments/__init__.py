"""The paper's experiments (erase against retraining), their task sets and metrics, and the
demo; none of it is needed to erase."""

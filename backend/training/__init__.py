"""Training and its measurements: samples and their making, losses, the trainer, the region
rule's calibration and the evaluation metrics. Never imported by the shipped pipeline."""

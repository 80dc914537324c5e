"""Generic training: train state, the jitted step, optimizers, the loop, checkpoints, metrics."""

"""Algorithms: each phase is a batch builder and a loss run through the generic train loop."""

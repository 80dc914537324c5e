"""Evaluation: alignment, safety, truthfulness and latency suites, rules and reports."""

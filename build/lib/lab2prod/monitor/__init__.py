"""Drift: the served model's logged traffic against its test-split reference, and the check that decides
on retraining."""

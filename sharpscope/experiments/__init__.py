"""Experiments: compare, sweep and correlate, on top of training, the analyses, statistics and plots."""

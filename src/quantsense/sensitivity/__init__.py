"""Sensitivity sweeps, paired statistics, rankings with ties, and proxy metrics."""

"""Sensitivity sweeps, rankings with tiers, and proxy metrics validated against the sweep."""

"""Plots (matplotlib, PNG) and the results folder: results.json, CSV tables, Markdown summary."""

"""Evaluation data: tasks looked up by name (sst2, wikitext) from a local file or the hub."""

from quantsense.data.classification import ClassificationData, load_classification_data
from quantsense.data.files import read_table

__all__ = ["ClassificationData", "load_classification_data", "read_table"]

"""Dataset mode of `swiftops infer`: reading local datasets, running them, and the resumable result file."""

from swiftops.dataset.results import ResultWriter
from swiftops.dataset.sources import DatasetRow, load_datasets

__all__ = ["DatasetRow", "ResultWriter", "load_datasets"]

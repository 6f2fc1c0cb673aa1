"""Dataset mode of `swiftops infer`: reading local datasets, running them, and the resumable result file."""

from swiftops.dataset.loader import DatasetRow, load_datasets
from swiftops.dataset.results import ResultWriter

__all__ = ["DatasetRow", "ResultWriter", "load_datasets"]

"""Paper reproductions: cells as configs, the paper's numbers as data, reports generated."""

from darkknowledge.reproduce.runner import best_offset, errors_with_offsets, load_cells, reproduce

__all__ = ["best_offset", "errors_with_offsets", "load_cells", "reproduce"]

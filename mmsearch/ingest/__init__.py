"""Discovering, decoding and embedding inputs into a collection's shards."""

from .discover import IMAGE_EXTENSIONS, ImageFile, TextRecord, classify, iter_image_files, iter_text_records
from .pipeline import IngestOptions, IngestReport, Progress, ingest

__all__ = [
    "IMAGE_EXTENSIONS",
    "ImageFile",
    "IngestOptions",
    "IngestReport",
    "Progress",
    "TextRecord",
    "classify",
    "ingest",
    "iter_image_files",
    "iter_text_records",
]

"""Discovering, decoding and embedding inputs into a collection's shards."""

from .corpora import TEXT_CORPUS_EXTENSIONS, TextRecord, iter_text_records, read_caption_manifest
from .discover import IMAGE_EXTENSIONS, ImageFile, classify, iter_image_files
from .pipeline import IngestOptions, IngestReport, Progress, ingest

__all__ = [
    "IMAGE_EXTENSIONS",
    "TEXT_CORPUS_EXTENSIONS",
    "ImageFile",
    "IngestOptions",
    "IngestReport",
    "Progress",
    "TextRecord",
    "classify",
    "ingest",
    "iter_image_files",
    "iter_text_records",
    "read_caption_manifest",
]

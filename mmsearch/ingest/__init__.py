"""Discovering, decoding and embedding inputs into a collection's shards."""

from .corpora import TEXT_CORPUS_EXTENSIONS, TextRecord, iter_text_records, read_caption_manifest
from .discover import IMAGE_EXTENSIONS, ImageFile, classify, iter_image_files
from .pipeline import IngestOptions, IngestReport, Progress, ingest
from .stage import EmbeddedImage, EmbedStage, ImageWork, LocalStage

__all__ = [
    "IMAGE_EXTENSIONS",
    "TEXT_CORPUS_EXTENSIONS",
    "EmbedStage",
    "EmbeddedImage",
    "ImageFile",
    "ImageWork",
    "IngestOptions",
    "IngestReport",
    "LocalStage",
    "Progress",
    "TextRecord",
    "classify",
    "ingest",
    "iter_image_files",
    "iter_text_records",
    "read_caption_manifest",
]

"""Query-layer building blocks: filters, weighted query arithmetic, evidence bundles, calibration, chat."""

from .combine import Q
from .evidence import EvidenceBundle, EvidenceItem
from .filters import Filter

__all__ = ["EvidenceBundle", "EvidenceItem", "Filter", "Q"]

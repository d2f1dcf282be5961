"""Evidence bundles for assistants: the best images and texts for a question, with citations."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass(frozen=True)
class EvidenceItem:
    """One cited piece of evidence. Images carry their stored labels (what the model sees in them, with
    confidences) and their nearest texts above the related-text threshold (a retrieval-based caption)."""

    citation: str  # "I1", "T2": how the answer cites it
    id: int
    modality: str
    score: float
    good_match: bool | None
    uri: str | None = None
    text: str | None = None
    caption: str | None = None
    nearest_texts: list[dict[str, Any]] = field(default_factory=list)  # {id, text, score}, score > the threshold
    labels: list[dict[str, Any]] = field(default_factory=list)  # {name, confidence}, best first


@dataclass(frozen=True)
class EvidenceBundle:
    """What :meth:`Collection.evidence` returns; ``to_prompt()`` renders it for a chat model."""

    question: str
    model: str
    threshold: float | None  # scores above it are good matches (calibrated on this collection)
    images: list[EvidenceItem]
    texts: list[EvidenceItem]
    #: an image's nearest texts pass only above this score (the text index's no-match threshold)
    related_threshold: float | None = None

    @property
    def found(self) -> bool:
        """True when at least one item is a good match; False means: say nothing was found."""
        return any(item.good_match for item in [*self.images, *self.texts])

    def to_dict(self) -> dict[str, Any]:
        """JSON form (the same in the library, the CLI and the HTTP API)."""
        return {**asdict(self), "found": self.found}

    def to_prompt(self) -> str:
        """A plain-text evidence block to put in front of an assistant's question."""
        lines = [f"Question: {self.question}", ""]
        if not self.found:
            lines.append("No item in the collection matches the question well; say that nothing relevant was found.")
        lines.append("Evidence retrieved from the collection (higher similarity is better):")
        for item in self.images:
            lines.append(f"[{item.citation}] image {item.uri} (similarity {item.score:.3f}"
                         + ("" if item.good_match is not False else ", weak match") + ")")
            if item.caption:
                lines.append(f"    caption: {item.caption}")
            if item.labels:
                lines.append("    the model sees: " + ", ".join(f"{label['name']} ({label['confidence']:.2f})"
                                                            for label in item.labels))
            if item.nearest_texts:
                lines.append("    related texts: " + " | ".join(f"{t['text']} (similarity {t['score']:.3f})"
                                                            for t in item.nearest_texts))
        for item in self.texts:
            lines.append(f"[{item.citation}] text (similarity {item.score:.3f}"
                         + ("" if item.good_match is not False else ", weak match") + f"): {item.text}")
        lines += ["", "Answer using only this evidence and cite it as [I1], [T1], ... "
                  "If the evidence does not answer the question, say so."]
        return "\n".join(lines)

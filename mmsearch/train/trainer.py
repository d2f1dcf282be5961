"""LiT-style adapter training: frozen base towers, small residual heads, symmetric InfoNCE, early stopping."""

from __future__ import annotations

import copy
import json
import logging
import math
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Sequence

import numpy as np

from ..errors import ConfigError
from ..evaluation import EvalReport, Pair, _recall, load_pairs
from .adapter import AdapterExistsError, adapter_exists, save_adapter
from .data import Features, base_features, clean_pairs, split_by_group

if TYPE_CHECKING:
    import torch

    from .heads import AdapterHeads

log = logging.getLogger(__name__)

LOSS_CHUNK_ROWS = 4096


@dataclass(frozen=True)
class TrainConfig:
    """Training hyper-parameters; the defaults suit a few hundred to a few hundred thousand pairs."""

    head: str = "linear"  # "linear" or "mlp"
    hidden_dim: int = 0  # MLP hidden width; 0: the embedding dim
    epochs: int = 100
    batch_size: int = 256
    learning_rate: float = 5e-3
    weight_decay: float = 0.01
    patience_epochs: int = 10  # stop after this many epochs without a better validation loss
    test_fraction: float = 0.2  # of caption groups, held out for the before/after report
    val_fraction: float = 0.15  # of the remaining groups, for early stopping
    min_pairs: int = 20
    seed: int = 0

    def check(self) -> None:
        """Raise :class:`ConfigError` for values that cannot work."""
        if self.head not in ("linear", "mlp"):
            raise ConfigError(f"head must be 'linear' or 'mlp', not {self.head!r}")
        if self.epochs < 1 or self.batch_size < 2 or self.learning_rate <= 0 or self.patience_epochs < 1:
            raise ConfigError("epochs and patience_epochs must be >= 1, batch_size >= 2, learning_rate > 0")
        if not (0 < self.test_fraction < 1 and 0 < self.val_fraction < 1):
            raise ConfigError("test_fraction and val_fraction must lie strictly between 0 and 1")


@dataclass(frozen=True)
class TrainProgress:
    """One finished epoch, handed to the progress callback."""

    epoch: int
    epochs: int
    train_loss: float
    val_loss: float
    best_epoch: int
    temperature: float


@dataclass
class TrainReport:
    """What training did; ``before`` and ``after`` are recall reports on the held-out test split."""

    adapter: str
    base_model: str
    head: str
    dim: int
    seed: int
    pairs: int
    train_pairs: int
    val_pairs: int
    test_pairs: int
    merged_duplicates: int
    skipped_images: int
    epochs_run: int
    best_epoch: int
    temperature: float
    seconds: float
    before: dict[str, Any] = field(default_factory=dict)
    after: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """JSON form."""
        return asdict(self)


@dataclass
class _Split:
    images: np.ndarray  # (N, dim) base image vectors of the pairs
    texts: np.ndarray
    groups: np.ndarray  # int group ids
    pairs: list[Pair]


def train_adapter(pairs: Sequence[Pair] | str | Path, *, base: str, out: str | Path, force: bool = False,
                  config: TrainConfig | None = None, device: str | None = None, batch_size: int = 32,
                  workers: int = 0, progress: Callable[[TrainProgress], None] | None = None) -> TrainReport:
    """Train an adapter for model ``base`` on image-caption ``pairs`` and save it to ``out``.

    ``pairs`` is a list of :class:`~mmsearch.evaluation.Pair`, a captioned image folder or a JSONL file.
    ``batch_size`` and ``workers`` apply to computing the base features; ``config`` holds the training
    settings. The result is usable as the model spec ``adapter:OUT``.
    """
    from ..encoders.registry import load_encoder

    started = time.perf_counter()
    config = config or TrainConfig()
    config.check()
    out = Path(out).expanduser().resolve()
    if adapter_exists(out) and not force:
        raise AdapterExistsError(str(out))
    pairs, merged = clean_pairs(load_pairs(pairs) if isinstance(pairs, (str, Path)) else list(pairs))
    _check_enough(len(pairs), config.min_pairs, "pairs")
    encoder = load_encoder(base, device=device)
    feats = base_features(pairs, encoder, out / "cache", batch_size=batch_size, workers=workers)
    readable = set(feats.image_uris)
    pairs = [p for p in pairs if p.image in readable]
    _check_enough(len(pairs), config.min_pairs, "pairs with a readable image")
    train_p, val_p, test_p = split_by_group(pairs, test_fraction=config.test_fraction,
                                            val_fraction=config.val_fraction, seed=config.seed)
    train, val, test = (_gather(feats, p) for p in (train_p, val_p, test_p))
    heads, best_epoch, epochs_run = _fit(train, val, encoder.dim, config, progress)
    report = TrainReport(adapter=str(out), base_model=encoder.spec, head=config.head, dim=encoder.dim, seed=config.seed,
                         pairs=len(pairs), train_pairs=len(train_p), val_pairs=len(val_p), test_pairs=len(test_p),
                         merged_duplicates=merged, skipped_images=feats.skipped_images, epochs_run=epochs_run,
                         best_epoch=best_epoch, temperature=round(1 / heads.scale().item(), 5), seconds=0.0)
    report.before = _feature_report(encoder.spec, test, None).to_dict()
    report.after = _feature_report(f"adapter:{out}", test, heads).to_dict()
    report.seconds = round(time.perf_counter() - started, 3)
    _save(out, heads, report, config, test_p)
    return report


def _check_enough(n: int, needed: int, what: str) -> None:
    if n < needed:
        raise ConfigError(f"only {n} {what}: training needs at least {needed} (min_pairs); add more captioned images")


def _gather(feats: Features, pairs: list[Pair]) -> _Split:
    img_row = {u: i for i, u in enumerate(feats.image_uris)}
    txt_row = {t: i for i, t in enumerate(feats.texts)}
    group_id = {g: i for i, g in enumerate(sorted({p.group for p in pairs}))}
    return _Split(feats.image_vecs[[img_row[p.image] for p in pairs]], feats.text_vecs[[txt_row[p.text] for p in pairs]],
                  np.array([group_id[p.group] for p in pairs]), pairs)


def _fit(train: _Split, val: _Split, dim: int, config: TrainConfig,
         progress: Callable[[TrainProgress], None] | None) -> tuple[AdapterHeads, int, int]:
    """AdamW with a cosine schedule; keeps the heads of the epoch with the lowest validation loss."""
    import torch

    from .heads import AdapterHeads

    torch.manual_seed(config.seed)
    heads = AdapterHeads(dim, config.head, config.hidden_dim)
    opt = torch.optim.AdamW(heads.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay)
    batch = min(config.batch_size, len(train.pairs))
    steps_per_epoch = math.ceil(len(train.pairs) / batch)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=config.epochs * steps_per_epoch)
    gen = torch.Generator().manual_seed(config.seed)
    tensors = [torch.from_numpy(a) for a in (train.images, train.texts, train.groups)]
    best = (_loss(heads, val).item(), 0, copy.deepcopy(heads.state_dict()))
    epoch = 0
    for epoch in range(1, config.epochs + 1):
        train_loss = _epoch(heads, opt, sched, tensors, batch, gen)
        val_loss = _loss(heads, val).item()
        if val_loss < best[0] - 1e-6:
            best = (val_loss, epoch, copy.deepcopy(heads.state_dict()))
        if progress:
            progress(TrainProgress(epoch, config.epochs, round(train_loss, 5), round(val_loss, 5), best[1],
                                   round(1 / heads.scale().item(), 5)))
        if epoch - best[1] >= config.patience_epochs:
            break
    heads.load_state_dict(best[2])
    return heads.eval(), best[1], epoch


def _epoch(heads: AdapterHeads, opt: Any, sched: Any, tensors: list[torch.Tensor], batch: int, gen: torch.Generator) -> float:
    import torch

    from .heads import contrastive_loss

    heads.train()
    order = torch.randperm(len(tensors[0]), generator=gen)
    total = 0.0
    for start in range(0, len(order), batch):
        idx = order[start:start + batch]
        if len(idx) < 2:
            continue  # a contrastive batch needs negatives
        img, txt, grp = (t[idx] for t in tensors)
        loss = contrastive_loss(heads.image(img), heads.text(txt), grp, heads.scale())
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        total += loss.item() * len(idx)
    return total / len(order)


def _loss(heads: AdapterHeads, split: _Split) -> torch.Tensor:
    import torch

    from .heads import contrastive_loss

    img, txt, grp = (torch.from_numpy(a) for a in (split.images, split.texts, split.groups))
    losses, weights = [], []
    with torch.no_grad():  # in chunks: the logits matrix of a large split would not fit in memory
        for s in range(0, len(grp), LOSS_CHUNK_ROWS):
            part = slice(s, s + LOSS_CHUNK_ROWS)
            losses.append(contrastive_loss(heads.image(img[part]), heads.text(txt[part]), grp[part], heads.scale()))
            weights.append(len(grp[part]))
    return (torch.stack(losses) * torch.tensor(weights)).sum() / sum(weights)


def _feature_report(model: str, split: _Split, heads: AdapterHeads | None) -> EvalReport:
    """The same recall as :func:`mmsearch.evaluate`, computed from cached base features (no re-decoding)."""
    from .adapter import _apply

    images = dict(zip((p.image for p in split.pairs), range(len(split.pairs))))
    texts = dict(zip((p.text for p in split.pairs), range(len(split.pairs))))
    img_rows = [images[u] for u in sorted(images)]
    txt_rows = [texts[t] for t in sorted(texts)]
    img_vecs, txt_vecs = split.images[img_rows], split.texts[txt_rows]
    if heads is not None:
        img_vecs, txt_vecs = _apply(heads.image, img_vecs), _apply(heads.text, txt_vecs)
    groups = np.array([p.group for p in split.pairs])
    img_groups, txt_groups = groups[img_rows], groups[txt_rows]
    report = EvalReport(model=model, images=len(img_rows), texts=len(txt_rows), groups=len(set(txt_groups.tolist())))
    report.text_to_image, chance_t2i = _recall(txt_vecs, txt_groups, img_vecs, img_groups, (1, 5, 10))
    report.image_to_text, chance_i2t = _recall(img_vecs, img_groups, txt_vecs, txt_groups, (1, 5))
    report.chance = {**{f"t2i@{k}": v for k, v in chance_t2i.items()}, **{f"i2t@{k}": v for k, v in chance_i2t.items()}}
    return report


def _save(out: Path, heads: AdapterHeads, report: TrainReport, config: TrainConfig, test: list[Pair]) -> None:
    from ..store.atomic import write_bytes_atomic

    meta = {"base_model": report.base_model, "head": config.head, "dim": report.dim, "hidden_dim": config.hidden_dim,
            "seed": config.seed, "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "config": asdict(config), "report": report.to_dict()}
    lines = "".join(json.dumps({"image": p.image, "text": p.text, "group": p.group}) + "\n" for p in test)
    write_bytes_atomic(out / "test_pairs.jsonl", lines.encode())
    save_adapter(out, heads, meta)

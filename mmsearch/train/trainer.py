"""LiT-style adapter training: frozen base towers, small residual heads, symmetric InfoNCE.

Small sets are where an adapter most easily does harm, so three things scale with the data:

- the heads are pulled toward the base model by a penalty ``identity_weight / n * ||W_out||^2`` on their output
  layers (zero there is exactly the base model), a Gaussian prior centred on the identity adapter: with ``n``
  training pairs it weighs most on small sets and fades as the data grows;
- the epoch is chosen by validation retrieval (mean reciprocal rank, both directions), not validation loss,
  and epoch 0 -- the base model itself -- is a candidate: an adapter is kept only when it beats the base model
  on validation, otherwise the saved adapter is the identity and the report says so;
- below ``cv_below_groups`` caption groups one held-out split is too small to choose by, so the number of epochs
  (and whether to keep the adapter at all) is chosen by k-fold cross-validation over the training pairs and the
  heads are then refitted on all of them.
"""

from __future__ import annotations

import copy
import json
import logging
import math
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator, Sequence

import numpy as np

from ..errors import ConfigError
from ..evaluation import EvalReport, Pair, load_pairs, recall_at_k
from .adapter import AdapterExistsError, adapter_exists, save_adapter
from .data import Features, base_features, clean_pairs, count_groups, group_folds, split_by_group

if TYPE_CHECKING:
    import torch

    from .heads import AdapterHeads

log = logging.getLogger(__name__)

LOSS_CHUNK_ROWS = 4096
SCORE_CHUNK_ROWS = 1024
TEMPERATURE_FIT_ROWS = 4096
SELECTION_METRIC = "mean reciprocal rank of the right answer, text->image and image->text averaged"
MIN_GAIN = 1e-6  # an epoch must beat the best so far (epoch 0: the base model) by more than this


@dataclass(frozen=True)
class TrainConfig:
    """Training hyper-parameters; the defaults adapt to the data size (see the module docstring)."""

    head: str = "linear"  # "linear" or "mlp"
    hidden_dim: int = 0  # MLP hidden width; 0: the embedding dim
    epochs: int = 100
    batch_size: int = 256
    learning_rate: float = 5e-3
    identity_weight: float = 10.0  # pull toward the base model: identity_weight / n * ||output layers||^2
    patience_epochs: int = 20  # held-out selection: stop after this many epochs without a better validation score
    test_fraction: float = 0.2  # of caption groups, held out for the before/after report
    val_fraction: float = 0.15  # of the remaining groups, for choosing the epoch (held-out selection)
    max_val_groups: int = 5000  # cap on the validation split (its score is computed every epoch)
    cv_folds: int = 5  # cross-validation folds, used below cv_below_groups
    cv_below_groups: int = 500  # fewer non-test caption groups than this: choose by cross-validation
    min_groups: int = 30  # refuse below this many caption groups (see _check_enough)
    small_groups: int = 200  # warn below this many: the held-out numbers are coarse
    threads: int = 1  # torch CPU threads while fitting the heads (0: leave torch's setting alone)
    seed: int = 0

    def check(self) -> None:
        """Raise :class:`ConfigError` for values that cannot work."""
        if self.head not in ("linear", "mlp"):
            raise ConfigError(f"head must be 'linear' or 'mlp', not {self.head!r}")
        if self.epochs < 1 or self.batch_size < 2 or self.learning_rate <= 0 or self.patience_epochs < 1:
            raise ConfigError("epochs and patience_epochs must be >= 1, batch_size >= 2, learning_rate > 0")
        if not (0 < self.test_fraction < 1 and 0 < self.val_fraction < 1):
            raise ConfigError("test_fraction and val_fraction must lie strictly between 0 and 1")
        if self.identity_weight < 0 or self.cv_folds < 2 or self.min_groups < 2 * self.cv_folds or self.threads < 0:
            raise ConfigError("identity_weight and threads must be >= 0, cv_folds >= 2 and min_groups >= 2 * cv_folds")


@dataclass(frozen=True)
class TrainProgress:
    """One finished epoch, handed to the progress callback.

    ``stage`` is "" for held-out selection, "fold i/k" while cross-validating and "final" for the refit on all
    training pairs (which has no validation: ``val_loss`` and ``val_score`` are NaN there).
    """

    epoch: int
    epochs: int
    train_loss: float
    val_loss: float
    best_epoch: int
    temperature: float
    stage: str = ""
    val_score: float = float("nan")


@dataclass
class TrainReport:
    """What training did; ``before`` and ``after`` are recall reports on the held-out test split.

    ``validation`` says how the adapter was chosen (method, pairs, metric, base and adapter score) and
    ``improved`` whether it beat the base model there; when it did not, the saved adapter is the identity.
    """

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
    improved: bool = False
    validation: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """JSON form."""
        return asdict(self)


@dataclass
class _Split:
    images: np.ndarray  # (N, dim) base image vectors of the pairs
    texts: np.ndarray
    groups: np.ndarray  # int group ids
    pairs: list[Pair]


@dataclass
class _Fit:
    heads: AdapterHeads
    best_epoch: int
    epochs_run: int
    scores: list[float]  # validation score after each epoch, [0] = before training (the base model)


@dataclass
class _Selection:
    fit: _Fit
    train_pairs: int
    val_pairs: int
    validation: dict[str, Any]


def train_adapter(pairs: Sequence[Pair] | str | Path, *, base: str, out: str | Path, force: bool = False,
                  config: TrainConfig | None = None, device: str | None = None, batch_size: int = 32,
                  workers: int = 0, progress: Callable[[TrainProgress], None] | None = None,
                  text_column: str | None = None, path_column: str | None = None) -> TrainReport:
    """Train an adapter for model ``base`` on image-caption ``pairs`` and save it to ``out``.

    ``pairs`` is a list of :class:`~mmsearch.evaluation.Pair`, a captioned image folder or a .jsonl/.csv/.parquet
    table read by :func:`~mmsearch.evaluation.load_pairs` (``text_column`` / ``path_column``: its columns, else
    guessed).
    ``batch_size`` and ``workers`` apply to computing the base features; ``config`` holds the training
    settings. The result is usable as the model spec ``adapter:OUT``. When the adapter does not beat the
    base model on validation, the identity adapter is saved and ``report.improved`` is False.
    """
    from ..encoders.registry import load_encoder

    started = time.perf_counter()
    config = config or TrainConfig()
    config.check()
    out = Path(out).expanduser().resolve()
    if adapter_exists(out) and not force:
        raise AdapterExistsError(str(out))
    pairs, merged = clean_pairs(load_pairs(pairs, text_column=text_column, path_column=path_column)
                                if isinstance(pairs, (str, Path)) else list(pairs))
    _check_enough(count_groups(pairs), config, "")
    encoder = load_encoder(base, device=device)
    feats = base_features(pairs, encoder, out / "cache", batch_size=batch_size, workers=workers)
    readable = set(feats.image_uris)
    pairs = [p for p in pairs if p.image in readable]
    groups = count_groups(pairs)
    _check_enough(groups, config, " with a readable image")
    notes = []
    if groups < config.small_groups:
        notes.append(f"small set: {groups} caption groups (under {config.small_groups}); the held-out test split has "
                     f"about {max(1, round(config.test_fraction * groups))} captions, so its recall moves in steps of "
                     f"{100 / max(1, round(config.test_fraction * groups)):.1f} points: read before/after as rough")
    train_p, val_p, test_p = split_by_group(pairs, test_fraction=config.test_fraction, val_fraction=config.val_fraction,
                                            seed=config.seed, max_val_groups=config.max_val_groups)
    with _torch_threads(config.threads):
        if count_groups(train_p + val_p) < config.cv_below_groups:
            sel = _select_by_cross_validation(feats, train_p + val_p, encoder.dim, config, progress)
        else:
            sel = _select_on_held_out(feats, train_p, val_p, encoder.dim, config, progress)
    heads, improved = sel.fit.heads, sel.validation["improved"]
    if not improved:
        notes.append(f"the adapter did not beat the base model on validation ({sel.validation['method']}): kept the "
                     f"base model, so the saved adapter is the identity (the same results as --model {encoder.spec})")
    for note in notes:
        log.warning(note)
    test = _gather(feats, test_p)
    report = TrainReport(adapter=str(out), base_model=encoder.spec, head=config.head, dim=encoder.dim, seed=config.seed,
                         pairs=len(pairs), train_pairs=sel.train_pairs, val_pairs=sel.val_pairs, test_pairs=len(test_p),
                         merged_duplicates=merged, skipped_images=feats.skipped_images, epochs_run=sel.fit.epochs_run,
                         best_epoch=sel.fit.best_epoch, temperature=round(1 / heads.scale().item(), 5), seconds=0.0,
                         improved=improved, validation=sel.validation, notes=notes)
    report.before = _feature_report(encoder.spec, test, None).to_dict()
    report.after = _feature_report(f"adapter:{out}", test, heads).to_dict()
    report.seconds = round(time.perf_counter() - started, 3)
    _save(out, heads, report, config, test_p)
    return report


@contextmanager
def _torch_threads(n: int) -> Iterator[None]:
    """Run with ``n`` torch CPU threads, then restore the setting (``n`` = 0: leave it alone).

    The heads are dim x dim matrices applied to a few hundred rows: more threads mostly add synchronisation.
    On the 2-core benchmark machine, busy with other jobs, the same cross-validation took 9 s on one thread
    and 190 s on two.
    """
    import torch

    before = torch.get_num_threads()
    if n:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _select_on_held_out(feats: Features, train_p: list[Pair], val_p: list[Pair], dim: int, config: TrainConfig,
                        progress: Callable[[TrainProgress], None] | None) -> _Selection:
    """Train on ``train_p``, keep the epoch (0: the base model) with the best score on ``val_p``."""
    fit = _fit(_gather(feats, train_p), _gather(feats, val_p), dim, config, seed=config.seed, epochs=config.epochs,
               patience=config.patience_epochs, progress=progress, stage="")
    return _Selection(fit, len(train_p), len(val_p), _validation("held-out split", len(val_p), fit.scores, fit.best_epoch))


def _select_by_cross_validation(feats: Features, pool: list[Pair], dim: int, config: TrainConfig,
                                progress: Callable[[TrainProgress], None] | None) -> _Selection:
    """Choose the epoch count by the mean validation score over k folds of ``pool``, then refit on all of it.

    Epoch 0 (the base model) is a candidate: when no epoch count beats it on the folds' mean, nothing is trained.
    """
    folds = group_folds(pool, folds=config.cv_folds, seed=config.seed)
    curves = []
    for i, (train_p, val_p) in enumerate(folds):
        fit = _fit(_gather(feats, train_p), _gather(feats, val_p), dim, config, seed=config.seed + i,
                   epochs=config.epochs, patience=None, progress=progress, stage=f"fold {i + 1}/{len(folds)}")
        curves.append(fit.scores)
    mean = np.mean(curves, axis=0).tolist()
    best = _best_epoch(mean)
    train = _gather(feats, pool)
    fit = _fit(train, None, dim, config, seed=config.seed, epochs=best, patience=None, progress=progress, stage="final")
    fit = _Fit(fit.heads, best, config.epochs, mean)
    method = f"{len(folds)}-fold cross-validation"
    return _Selection(fit, len(pool), len(pool), _validation(method, len(pool), mean, best))


def _validation(method: str, pairs: int, scores: list[float], best: int) -> dict[str, Any]:
    return {"method": method, "pairs": pairs, "metric": SELECTION_METRIC, "base": round(scores[0], 5),
            "adapter": round(scores[best], 5), "improved": best > 0}


def _best_epoch(scores: Sequence[float]) -> int:
    """The first epoch whose score beats every earlier one by more than MIN_GAIN; 0 (the base model) if none."""
    best = 0
    for epoch, score in enumerate(scores):
        if score > scores[best] + MIN_GAIN:
            best = epoch
    return best


def _check_enough(n: int, config: TrainConfig, what: str) -> None:
    """Refuse below ``min_groups`` caption groups.

    A group is one caption (with all the images it describes); groups, not pairs, are what the splits and the
    contrastive loss count. With the defaults, 30 groups leave 6 captions for the test report and about 5 per
    cross-validation fold: below that one caption moves recall@1 by 20 points or more, and there is no telling an
    adapter that helps from one that hurts.
    """
    if n < config.min_groups:
        raise ConfigError(f"only {n} distinct captions{what}: training needs at least {config.min_groups} "
                          f"(min_groups) to hold some out for validation and a before/after test; "
                          "add more captioned images")


def _gather(feats: Features, pairs: list[Pair]) -> _Split:
    img_row = {u: i for i, u in enumerate(feats.image_uris)}
    txt_row = {t: i for i, t in enumerate(feats.texts)}
    group_id = {g: i for i, g in enumerate(sorted({p.group for p in pairs}))}
    return _Split(feats.image_vecs[[img_row[p.image] for p in pairs]], feats.text_vecs[[txt_row[p.text] for p in pairs]],
                  np.array([group_id[p.group] for p in pairs], dtype=np.int64), pairs)


def _fit(train: _Split, val: _Split | None, dim: int, config: TrainConfig, *, seed: int, epochs: int,
         patience: int | None, progress: Callable[[TrainProgress], None] | None, stage: str) -> _Fit:
    """Adam with a cosine schedule over ``config.epochs`` and the pull toward the identity.

    With ``val``, keeps the heads of the epoch with the best validation score (epoch 0: untrained, the base
    model); without, trains ``epochs`` epochs and keeps the last. The schedule always spans ``config.epochs``,
    so a refit for the first ``epochs`` of them follows the same learning rates as the runs that chose it.
    """
    import torch

    from .heads import AdapterHeads

    torch.manual_seed(seed)
    heads = AdapterHeads(dim, config.head, config.hidden_dim)
    with torch.no_grad():
        heads.log_scale.fill_(_base_log_scale(train, seed))
    opt = torch.optim.Adam(heads.parameters(), lr=config.learning_rate)
    batch = min(config.batch_size, len(train.pairs))
    steps_per_epoch = math.ceil(len(train.pairs) / batch)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=config.epochs * steps_per_epoch)
    gen = torch.Generator().manual_seed(seed)
    tensors = [torch.from_numpy(a) for a in (train.images, train.texts, train.groups)]
    penalty = config.identity_weight / len(train.pairs)
    scores = [_score(heads, val)] if val is not None else []
    best_epoch, best_state = 0, copy.deepcopy(heads.state_dict())
    epoch = 0
    for epoch in range(1, epochs + 1):
        train_loss = _epoch(heads, opt, sched, tensors, batch, gen, penalty)
        val_loss = val_score = float("nan")
        if val is not None:
            val_loss, val_score = _loss(heads, val).item(), _score(heads, val)
            scores.append(val_score)
            if val_score > scores[best_epoch] + MIN_GAIN:
                best_epoch, best_state = epoch, copy.deepcopy(heads.state_dict())
        else:
            best_epoch = epoch
        if progress:
            progress(TrainProgress(epoch, epochs, round(train_loss, 5), round(val_loss, 5), best_epoch,
                                   round(1 / heads.scale().item(), 5), stage, round(val_score, 5)))
        if patience and epoch - best_epoch >= patience:
            break
    if val is not None:
        heads.load_state_dict(best_state)
    return _Fit(heads.eval(), best_epoch, epoch, scores)


def _base_log_scale(train: _Split, seed: int) -> float:
    """The log logit scale that best fits the base model (identity heads) on the training pairs.

    Starting there means early updates go into the heads rather than into fixing the temperature, and
    epoch 0 is the base model at its own best temperature.
    """
    import torch

    from .heads import MAX_LOGIT_SCALE, contrastive_loss

    rows = np.random.default_rng(seed).permutation(len(train.pairs))[:TEMPERATURE_FIT_ROWS]
    img, txt = (torch.nn.functional.normalize(torch.from_numpy(a[rows]), dim=-1) for a in (train.images, train.texts))
    grp = torch.from_numpy(train.groups[rows])
    grid = np.linspace(0.0, MAX_LOGIT_SCALE, 47)
    with torch.no_grad():
        losses = [contrastive_loss(img, txt, grp, torch.tensor(math.exp(g))).item() for g in grid]
    return float(grid[int(np.argmin(losses))])


def _epoch(heads: AdapterHeads, opt: Any, sched: Any, tensors: list[torch.Tensor], batch: int, gen: torch.Generator,
           penalty: float) -> float:
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
        total += loss.item() * len(idx)
        if penalty:
            loss = loss + penalty * sum((p * p).sum() for p in heads.identity_parameters())
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
    return total / len(order)


def _score(heads: AdapterHeads, split: _Split) -> float:
    """Validation retrieval: mean reciprocal rank of the best right answer, both directions averaged."""
    import torch

    with torch.no_grad():
        img = heads.image(torch.from_numpy(split.images))
        txt = heads.text(torch.from_numpy(split.texts))
    groups = torch.from_numpy(split.groups)
    return 0.5 * (_mrr(txt, img, groups) + _mrr(img, txt, groups))


def _mrr(queries: torch.Tensor, items: torch.Tensor, groups: torch.Tensor) -> float:
    total = 0.0
    for s in range(0, len(queries), SCORE_CHUNK_ROWS):
        sims = queries[s:s + SCORE_CHUNK_ROWS] @ items.T
        right = groups[s:s + SCORE_CHUNK_ROWS, None] == groups[None, :]
        best_right = sims.masked_fill(~right, float("-inf")).amax(dim=1, keepdim=True)
        rank = (sims.masked_fill(right, float("-inf")) > best_right).sum(dim=1)
        total += (1.0 / (rank + 1.0)).sum().item()
    return total / len(queries)


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
    from .adapter import apply_head

    images = dict(zip((p.image for p in split.pairs), range(len(split.pairs))))
    texts = dict(zip((p.text for p in split.pairs), range(len(split.pairs))))
    img_rows = [images[u] for u in sorted(images)]
    txt_rows = [texts[t] for t in sorted(texts)]
    img_vecs, txt_vecs = split.images[img_rows], split.texts[txt_rows]
    if heads is not None:
        img_vecs, txt_vecs = apply_head(heads.image, img_vecs), apply_head(heads.text, txt_vecs)
    groups = np.array([p.group for p in split.pairs])
    img_groups, txt_groups = groups[img_rows], groups[txt_rows]
    report = EvalReport(model=model, images=len(img_rows), texts=len(txt_rows), groups=len(set(txt_groups.tolist())))
    report.text_to_image, chance_t2i = recall_at_k(txt_vecs, txt_groups, img_vecs, img_groups, (1, 5, 10))
    report.image_to_text, chance_i2t = recall_at_k(img_vecs, img_groups, txt_vecs, txt_groups, (1, 5))
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

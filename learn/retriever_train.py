"""Training the two-tower retriever (`policies.two_tower`) from joined decisions.

Examples: each served slot of a joined decision is one (context, item) pair, positive when its
joined reward is > 0 (rewarded), negative otherwise (shown, not rewarded). Each batch also
draws `negatives` sampled negatives per example from the items' empirical distribution Q (how
often each was shown, smoothed); their logits get the logQ correction
``logit - log(Q(item) * n_items)`` (sampling-bias correction: an item drawn more often than
uniformly counts less, so popular items are not pushed down for being popular). Sampled
negatives are only probably negative (a random item may well be clicked), so their loss is
weighted by `negative_weight` against the logged examples'.

Loss: binary cross-entropy with logits; Adam (on the CPU a lazy, sparse Adam for the hashed
embedding tables, whose rows a batch barely touches; on a GPU dense gradients and one Adam). The
validation set is the newest `val_fraction` of the examples by decision time (a time split: the
model is scored on events after those it learned from); each epoch reports its ROC AUC on the
shown examples and recall@k (how often a rewarded item is among the k best-scored of all items);
training stops after `patience` epochs without a better AUC and keeps the best epoch's weights.
The same code runs on CPU and CUDA (`device`); a tqdm bar shows the epochs.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from evaluation.simulator_catalog import roc_auc
from log.training_reads import JoinedDecision
from policies.two_tower import Encoded, TwoTower, TwoTowerConfig, encode

__all__ = [
    "RetrieverExamples",
    "RetrieverTrainConfig",
    "TrainResult",
    "examples_from_joined",
    "make_examples",
    "train_two_tower",
]


@dataclass(frozen=True)
class RetrieverTrainConfig:
    epochs: int = 30
    batch_size: int = 2048
    lr: float = 0.02
    negatives: int = 2
    negative_weight: float = 0.25
    patience: int = 3
    val_fraction: float = 0.2
    recall_k: tuple[int, ...] = (10, 50)
    device: str = "cpu"
    # sparse embedding gradients with a lazy Adam (None: on the CPU only, see `_optimizers`)
    sparse_gradients: bool | None = None
    seed: int = 0
    progress: bool = True
    tower: TwoTowerConfig = field(default_factory=TwoTowerConfig)

    def __post_init__(self) -> None:
        if not 1 <= self.epochs <= 1000 or not 1 <= self.batch_size <= 1 << 20:
            raise ValueError("epochs must be in [1, 1000] and batch_size in [1, 1048576]")
        if not 0 <= self.negatives <= 100 or not 0.01 <= self.val_fraction <= 0.9:
            raise ValueError("negatives must be in [0, 100] and val_fraction in [0.01, 0.9]")
        if not 0 <= self.negative_weight <= 10:
            raise ValueError("negative_weight must be in [0, 10]")
        if not 0 < self.lr <= 1 or self.patience < 1:
            raise ValueError("lr must be in (0, 1] and patience >= 1")


@dataclass(frozen=True)
class RetrieverExamples:
    """Examples as arrays: `contexts` (one row per example) and `items` (one row per distinct
    item, `item_ids`), the example's item row, its label and its decision time."""

    contexts: Encoded
    items: Encoded
    item_ids: list[str]
    item_of: np.ndarray  # int64, per example
    label: np.ndarray  # float32, per example
    time: np.ndarray  # float64, per example

    def __len__(self) -> int:
        return len(self.label)


def make_examples(
    rows: Iterable[tuple[Mapping[str, Any], str, Mapping[str, Any], bool, float]],
    buckets: int,
) -> RetrieverExamples:
    """From (context, item id, item features, rewarded, time) tuples; an item's features are
    its latest."""
    contexts: list[Mapping[str, Any]] = []
    item_rows: dict[str, int] = {}
    item_features: list[Mapping[str, Any]] = []
    item_of, labels, times = [], [], []
    for context, item_id, features, rewarded, t in rows:
        contexts.append(context)
        row = item_rows.get(item_id)
        if row is None:
            row = item_rows[item_id] = len(item_features)
            item_features.append(features)
        else:
            item_features[row] = features
        item_of.append(row)
        labels.append(1.0 if rewarded else 0.0)
        times.append(t)
    return RetrieverExamples(
        encode(contexts, buckets),
        encode(item_features, buckets),
        list(item_rows),
        np.asarray(item_of, dtype=np.int64),
        np.asarray(labels, dtype=np.float32),
        np.asarray(times, dtype=np.float64),
    )


def examples_from_joined(events: Iterable[JoinedDecision], buckets: int) -> RetrieverExamples:
    """Every served slot of each joined decision: positive when its reward is > 0."""

    def rows() -> Iterable[tuple[Mapping[str, Any], str, Mapping[str, Any], bool, float]]:
        for event in events:
            record = event.record
            features = {a["id"]: a.get("features") or {} for a in record.actions}
            t = record.decided_at.timestamp()
            for slot in record.slots:
                item = slot["action_id"]
                reward = event.rewards.get(int(slot["slot"]), 0.0)
                yield record.context, item, features.get(item, {}), reward > 0, t

    return make_examples(rows(), buckets)


@dataclass(frozen=True)
class TrainResult:
    model: TwoTower
    metrics: dict[str, Any]


def _split(n: int, times: np.ndarray, val_fraction: float) -> tuple[np.ndarray, np.ndarray]:
    order = np.argsort(times, kind="stable")
    cut = round(n * (1 - val_fraction))
    return order[:cut], order[cut:]


class _OnDevice:
    def __init__(self, ex: RetrieverExamples, device: torch.device) -> None:
        self.ctx_index = torch.from_numpy(ex.contexts.index).to(device)
        self.ctx_weight = torch.from_numpy(ex.contexts.weight).to(device)
        self.item_index = torch.from_numpy(ex.items.index).to(device)
        self.item_weight = torch.from_numpy(ex.items.weight).to(device)
        self.item_of = torch.from_numpy(ex.item_of).to(device)
        self.label = torch.from_numpy(ex.label).to(device)


def _scores(
    model: TwoTower, data: _OnDevice, rows: torch.Tensor, chunk: int = 65_536
) -> np.ndarray:
    out = []
    with torch.no_grad():
        for start in range(0, len(rows), chunk):
            r = rows[start : start + chunk]
            u = model.user(data.ctx_index[r], data.ctx_weight[r])
            items = data.item_of[r]
            v = model.item(data.item_index[items], data.item_weight[items])
            out.append((u * v).sum(1).float().cpu().numpy())
    return np.concatenate(out) if out else np.zeros(0)


def _recall(
    model: TwoTower, data: _OnDevice, positives: torch.Tensor, ks: tuple[int, ...]
) -> dict[str, float]:
    """recall@k: the share of rewarded validation examples whose item is among the k
    best-scored of all items for that context."""
    if len(positives) == 0:
        return {f"recall_at_{k}": float("nan") for k in ks}
    hits = {k: 0 for k in ks}
    with torch.no_grad():
        v = model.item(data.item_index, data.item_weight)  # (n_items, dim)
        for start in range(0, len(positives), 4096):
            r = positives[start : start + 4096]
            u = model.user(data.ctx_index[r], data.ctx_weight[r])
            scores = u @ v.T
            target = scores.gather(1, data.item_of[r].unsqueeze(1))
            rank = (scores > target).sum(1)
            for k in ks:
                hits[k] += int((rank < k).sum())
    return {f"recall_at_{k}": hits[k] / len(positives) for k in ks}


def _optimizers(model: TwoTower, lr: float, *, sparse: bool) -> list[torch.optim.Optimizer]:
    """On the CPU the bags' gradients are sparse (the rows a batch touched) and a lazy Adam
    updates only those (2.7x faster there). On a GPU sparse gradients are the bottleneck (their
    coalescing sorts every index of the batch): the bags get dense gradients and one Adam
    updates everything (measured on an H200: 0.65M examples/s sparse, see the README)."""
    for bag in (model.user.bag, model.item.bag):
        bag.sparse = sparse
    if not sparse:
        return [torch.optim.Adam(model.parameters(), lr=lr)]
    bags = [model.user.bag.weight, model.item.bag.weight]
    dense = [p for name, p in model.named_parameters() if not name.endswith("bag.weight")]
    return [torch.optim.SparseAdam(bags, lr=lr), torch.optim.Adam(dense, lr=lr)]


def train_two_tower(ex: RetrieverExamples, config: RetrieverTrainConfig) -> TrainResult:
    """Train on the oldest examples, validate on the newest (see the module docstring)."""
    if len(ex) < 10:
        raise ValueError(f"too few examples to train a retriever: {len(ex)}")
    device = torch.device(config.device)
    torch.manual_seed(config.seed)
    generator = torch.Generator(device=device).manual_seed(config.seed)
    model = TwoTower(config.tower).to(device)
    sparse = config.sparse_gradients
    optimizers = _optimizers(
        model, config.lr, sparse=device.type == "cpu" if sparse is None else sparse
    )
    loss_fn = nn.BCEWithLogitsLoss()
    data = _OnDevice(ex, device)
    train_rows_np, val_rows_np = _split(len(ex), ex.time, config.val_fraction)
    train_rows = torch.from_numpy(train_rows_np).to(device)
    val_rows = torch.from_numpy(val_rows_np).to(device)
    n_items = len(ex.item_ids)
    counts = np.bincount(ex.item_of[train_rows_np], minlength=n_items) + 1.0  # smoothed
    q = counts / counts.sum()
    q_t = torch.from_numpy(q.astype(np.float32)).to(device)
    log_q_correction = torch.log(q_t * n_items)
    val_labels = ex.label[val_rows_np] > 0
    val_positive = val_rows[torch.from_numpy(val_labels).to(device)]

    best_auc, best_state, best_epoch, stale = -math.inf, None, 0, 0
    history: list[dict[str, float]] = []
    examples_seen, train_s = 0, 0.0
    bar = tqdm(range(config.epochs), desc="two-tower", unit="epoch", disable=not config.progress)
    for epoch in bar:
        model.train()
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        order = train_rows[torch.randperm(len(train_rows), generator=generator, device=device)]
        total_loss, batches = torch.zeros((), device=device), 0
        for first in range(0, len(order), config.batch_size):
            rows = order[first : first + config.batch_size]
            u = model.user(data.ctx_index[rows], data.ctx_weight[rows])
            shown = data.item_of[rows]
            v = model.item(data.item_index[shown], data.item_weight[shown])
            logits = (u * v).sum(1)
            loss = loss_fn(logits, data.label[rows])
            if config.negatives:
                drawn = torch.multinomial(
                    q_t, len(rows) * config.negatives, replacement=True, generator=generator
                )
                vn = model.item(data.item_index[drawn], data.item_weight[drawn])
                un = u.repeat_interleave(config.negatives, dim=0)
                neg_logits = (un * vn).sum(1) - log_q_correction[drawn]
                loss = loss + config.negative_weight * loss_fn(
                    neg_logits, torch.zeros_like(neg_logits)
                )
            for optimizer in optimizers:
                optimizer.zero_grad(set_to_none=True)
            loss.backward()
            for optimizer in optimizers:
                optimizer.step()
            total_loss += loss.detach()
            batches += 1
        if device.type == "cuda":
            torch.cuda.synchronize()
        train_s += time.perf_counter() - start
        examples_seen += len(order)
        model.eval()
        auc = roc_auc(_scores(model, data, val_rows), val_labels)
        recall = _recall(model, data, val_positive, config.recall_k)
        entry = {"epoch": epoch + 1, "loss": float(total_loss) / max(1, batches), "auc": auc}
        history.append({**entry, **recall})
        bar.set_postfix(loss=f"{entry['loss']:.4f}", auc=f"{auc:.4f}")
        if auc > best_auc + 1e-4:
            best_auc, best_epoch, stale = auc, epoch + 1, 0
            best_state = {k: t.detach().clone() for k, t in model.state_dict().items()}
        else:
            stale += 1
            if stale >= config.patience:
                break
    if best_state is not None:
        model.load_state_dict(best_state)
    model = model.cpu().eval()
    best = history[best_epoch - 1] if best_epoch else history[-1]
    metrics = {
        "kind": "retriever",
        "val_auc": best["auc"],
        **{k: v for k, v in best.items() if k.startswith("recall_at_")},
        "best_epoch": best_epoch,
        "epochs_run": len(history),
        "train_examples": len(train_rows_np),
        # the window of decision times it learned from (epoch seconds): a future retriever
        # gate scores it only on events after `trained_until`
        "trained_from": float(ex.time[train_rows_np].min()) if len(train_rows_np) else None,
        "trained_until": float(ex.time[train_rows_np].max()) if len(train_rows_np) else None,
        "val_examples": len(val_rows_np),
        "items": n_items,
        "examples_per_s": examples_seen / train_s if train_s > 0 else float("nan"),
        "device": str(device),
        "history": history,
        "config": {k: v for k, v in asdict(config).items() if k not in ("progress",)},
    }
    return TrainResult(model, metrics)

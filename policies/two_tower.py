"""The two-tower retriever: a user tower over context features and an item tower over item
features, scored by their dot product (a logit: sigmoid gives the click probability).

Features are hashed (the hashing trick, as Vowpal Wabbit does): a categorical feature
``key=value`` (strings, booleans, each string of a list) is one bucket with weight 1; a numeric
feature ``key`` is one bucket weighted by its value, squashed to sign(x) log(1 + |x|) so that no
value can blow the sum up. Each tower sums its buckets' embeddings (an `EmbeddingBag`, width
`hidden`) and maps the sum linearly to the shared embedding space (`dim`). Buckets come from
CRC32, so the encoding is the same in every process. Nested objects are flattened with dots.

torch is imported here and in `learn/` only; nothing is built at import time.
"""

from __future__ import annotations

import io
import math
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

__all__ = [
    "Encoded",
    "TwoTower",
    "TwoTowerConfig",
    "encode",
    "encode_one",
    "load_two_tower",
    "one_torch_thread",
    "save_two_tower",
]


@dataclass(frozen=True)
class TwoTowerConfig:
    """`buckets`: hashed feature space per tower (a power of two); `hidden`: width of each
    tower's bag of embeddings; `dim`: the embedding both towers map to."""

    buckets: int = 1 << 16
    hidden: int = 64
    dim: int = 32

    def __post_init__(self) -> None:
        if self.buckets < 16 or self.buckets > 1 << 22 or self.buckets & (self.buckets - 1):
            raise ValueError("buckets must be a power of two in [16, 4194304]")
        if not 1 <= self.hidden <= 1024 or not 2 <= self.dim <= 256:
            raise ValueError("hidden must be in [1, 1024] and dim in [2, 256]")


@dataclass(frozen=True)
class Encoded:
    """A batch of hashed feature bags, padded to one width: row i's buckets are `index[i]`
    with weights `weight[i]` (padding: bucket 0 with weight 0)."""

    index: np.ndarray  # int64 (n, width)
    weight: np.ndarray  # float32 (n, width)

    def __len__(self) -> int:
        return len(self.index)


def _bucket(token: str, mask: int) -> int:
    return zlib.crc32(token.encode()) & mask


def _squash(x: float) -> float:
    if not math.isfinite(x):
        return 0.0
    return math.copysign(math.log1p(abs(x)), x)


def _flatten(
    features: Mapping[str, Any], prefix: str, mask: int, out: list[tuple[int, float]]
) -> None:
    for key, value in features.items():
        name = prefix + key
        if isinstance(value, bool):
            out.append((_bucket(f"{name}={value}", mask), 1.0))
        elif isinstance(value, int | float):
            out.append((_bucket(name, mask), _squash(float(value))))
        elif isinstance(value, str):
            out.append((_bucket(f"{name}={value}", mask), 1.0))
        elif isinstance(value, Mapping):
            _flatten(value, name + ".", mask, out)
        elif isinstance(value, list | tuple):
            for item in value:
                if isinstance(item, str | bool):
                    out.append((_bucket(f"{name}={item}", mask), 1.0))
                elif isinstance(item, int | float):
                    out.append((_bucket(f"{name}[]", mask), _squash(float(item))))


def encode_one(features: Mapping[str, Any], buckets: int) -> list[tuple[int, float]]:
    """The (bucket, weight) pairs of one feature object; a constant bias bucket comes first."""
    out: list[tuple[int, float]] = [(0, 1.0)]
    _flatten(features, "", buckets - 1, out)
    return out


def encode(rows: Sequence[Mapping[str, Any]], buckets: int) -> Encoded:
    pairs = [encode_one(features, buckets) for features in rows]
    width = max((len(p) for p in pairs), default=1)
    index = np.zeros((len(rows), width), dtype=np.int64)
    weight = np.zeros((len(rows), width), dtype=np.float32)
    for i, row in enumerate(pairs):
        index[i, : len(row)] = [b for b, _ in row]
        weight[i, : len(row)] = [w for _, w in row]
    return Encoded(index, weight)


class _Tower(nn.Module):
    def __init__(self, config: TwoTowerConfig) -> None:
        super().__init__()
        # sparse gradients: a batch touches few of the buckets (trained with a lazy Adam)
        self.bag = nn.EmbeddingBag(config.buckets, config.hidden, mode="sum", sparse=True)
        nn.init.normal_(self.bag.weight, std=0.05)
        # A linear map of the bag: with ReLU or tanh hidden layers the simulator's towers sat on
        # a popularity-only plateau for several epochs before learning the interactions.
        self.mlp = nn.Linear(config.hidden, config.dim)

    def forward(self, index: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.mlp(self.bag(index, per_sample_weights=weight))
        return out


class TwoTower(nn.Module):
    """logit(user, item) = <user_tower(context), item_tower(item)>."""

    def __init__(self, config: TwoTowerConfig | None = None) -> None:
        super().__init__()
        self.config = config or TwoTowerConfig()
        self.user = _Tower(self.config)
        self.item = _Tower(self.config)

    def _tower(self, tower: _Tower, batch: Encoded, device: torch.device) -> torch.Tensor:
        return tower(
            torch.from_numpy(batch.index).to(device), torch.from_numpy(batch.weight).to(device)
        )

    def users(self, batch: Encoded, device: torch.device | None = None) -> torch.Tensor:
        return self._tower(self.user, batch, device or torch.device("cpu"))

    def items(self, batch: Encoded, device: torch.device | None = None) -> torch.Tensor:
        return self._tower(self.item, batch, device or torch.device("cpu"))

    @torch.no_grad()
    def embed_items(self, rows: Sequence[Mapping[str, Any]]) -> np.ndarray:
        """Item embeddings (float32, one row per feature object), on the CPU."""
        self.eval()
        if not rows:
            return np.zeros((0, self.config.dim), dtype=np.float32)
        return self.items(encode(rows, self.config.buckets)).numpy().astype(np.float32)

    @torch.no_grad()
    def embed_users(self, contexts: Sequence[Mapping[str, Any]]) -> np.ndarray:
        """User embeddings (float32, one row per context), on the CPU."""
        self.eval()
        if not contexts:
            return np.zeros((0, self.config.dim), dtype=np.float32)
        return self.users(encode(contexts, self.config.buckets)).numpy().astype(np.float32)

    @torch.no_grad()
    def embed_user(self, context: Mapping[str, Any]) -> np.ndarray:
        """One context's user embedding, float32 of shape (1, dim)."""
        self.eval()
        return self.users(encode([context], self.config.buckets)).numpy().astype(np.float32)


def one_torch_thread() -> None:
    """One intra-op thread for torch in a serving process (the user tower is tiny)."""
    if torch.get_num_threads() != 1:
        torch.set_num_threads(1)


def save_two_tower(model: TwoTower) -> bytes:
    buffer = io.BytesIO()
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    torch.save({"config": asdict(model.config), "state": state}, buffer)
    return buffer.getvalue()


def load_two_tower(artifact: bytes) -> TwoTower:
    data = torch.load(io.BytesIO(artifact), map_location="cpu", weights_only=True)
    model = TwoTower(TwoTowerConfig(**data["config"]))
    model.load_state_dict(data["state"])
    model.eval()
    return model

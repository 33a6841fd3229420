"""Experience replay for continual learning: a fixed-size reservoir of past examples
(Vitter 1985, Algorithm R) mixed into each new task's training data."""
from __future__ import annotations

import random
from typing import Any, Generic, Iterable, TypeVar

T = TypeVar("T")


class ReservoirBuffer(Generic[T]):
    """Keeps a uniform random sample of at most ``capacity`` of all items ever offered:
    after n offers every item is in the buffer with probability min(1, capacity / n)."""

    def __init__(self, capacity: int, seed: int = 0):
        if capacity < 0:
            raise ValueError("capacity must be >= 0")
        self.capacity = capacity
        self.items: list[T] = []
        self.seen = 0
        self.rng = random.Random(seed)

    def add(self, item: T) -> None:
        self.seen += 1
        if len(self.items) < self.capacity:
            self.items.append(item)
            return
        j = self.rng.randrange(self.seen)
        if j < self.capacity:
            self.items[j] = item

    def extend(self, items: Iterable[T]) -> None:
        for item in items:
            self.add(item)

    def __len__(self) -> int:
        return len(self.items)

    def sample(self, n: int, rng: random.Random | None = None) -> list[T]:
        """``n`` items drawn uniformly with replacement (the buffer may be smaller than n)."""
        if not self.items or n <= 0:
            return []
        rng = rng or self.rng
        return [self.items[rng.randrange(len(self.items))] for _ in range(n)]


def replay_count(n_new: int, ratio: float) -> int:
    """Replayed examples to add to ``n_new`` new ones so that they make up ``ratio`` of the mix."""
    if not 0 <= ratio < 1:
        raise ValueError("replay ratio must be in [0, 1)")
    return round(n_new * ratio / (1 - ratio))


def mix_with_replay(new: list[Any], buffer: ReservoirBuffer, ratio: float, seed: int) -> list[Any]:
    """New examples plus replayed ones (``ratio`` of the result, when the buffer is not empty), shuffled."""
    rng = random.Random(seed)
    mixed = list(new) + buffer.sample(replay_count(len(new), ratio), rng)
    rng.shuffle(mixed)
    return mixed

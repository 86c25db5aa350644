"""Per-worker randomness for per-example CPU transforms (DataLoader workers, processes, ranks).

albumentations 2.0.8 gives every worker an identical copy of a seeded ``Compose``, and ``Compose(seed=...)`` seeds
each transform with the *same* seed, which correlates their coin flips (with ``HorizontalFlip(p=0.5)`` followed by
``ToGray(p=0.2)``, every grey image is also flipped). Transforms here are driven by one generator per pipeline,
reseeded whenever the object finds itself in a new worker (:func:`worker_context`).
"""

from __future__ import annotations

import os
import random

import albumentations as A
import numpy as np
import torch

__all__ = ["seed_view_transform", "worker_context"]


def seed_view_transform(transform: A.Compose, seed: int | np.random.SeedSequence) -> None:
    """Drive every step of ``transform`` from one generator derived from ``seed``.

    Prefer this to ``Compose(seed=...)``/``set_random_seed``, which give each step an identical generator.
    """
    sequence = seed if isinstance(seed, np.random.SeedSequence) else np.random.SeedSequence(seed)
    numpy_seed, python_seed = sequence.spawn(2)
    transform.set_random_state(
        np.random.default_rng(numpy_seed), random.Random(int(python_seed.generate_state(1, np.uint64)[0]))
    )


def worker_context() -> tuple[int, int | None, int | None]:
    """(process id, DataLoader worker id, torch's worker seed): it changes exactly when a pickled copy of a
    per-example transform starts running somewhere new, which is when it must reseed itself."""
    info = torch.utils.data.get_worker_info()
    return os.getpid(), None if info is None else info.id, None if info is None else info.seed

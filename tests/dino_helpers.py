"""Pretraining batches for the DINO-family tests (`test_dino_objective.py`, `test_dino_teacher.py`)."""

import torch


def pretraining_batch(batch_size=4, masked=False, seed=0):
    """Random views and K=2 targets at 32² (a 4×4 patch grid); with `masked`, the first half of the pairs masked."""
    generator = torch.Generator().manual_seed(seed)
    inputs = {
        "pixel_values": torch.randn(batch_size, 3, 32, 32, generator=generator),
        "transformed_pixel_values": torch.randn(batch_size, 3, 32, 32, generator=generator),
        "intermediate_pixel_values": torch.randn(batch_size, 2, 3, 32, 32, generator=generator),
    }
    if masked:
        masks = torch.zeros(batch_size, 2, 16, dtype=torch.bool)
        masks[: batch_size // 2, :, :6] = True  # half the pairs masked, both views
        inputs["bool_masked_pos"] = masks
    return inputs

"""The DINO family's objective (DINO, iBOT, DINOv2): its losses against their definitions, the model's SSL loss as
their formula, and the inputs it reads (block masks, local crops). The EMA teacher is `test_dino_teacher.py`'s."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from dino_helpers import pretraining_batch
from model_helpers import tiny_config
from trainer_helpers import TRANSFORMATION, dino_config, pair_stream
from transformers import set_seed

from equirecon import EquiReconForPreTraining
from equirecon.modeling.dino_losses import dino_cls_loss, koleo_loss, masked_patch_loss
from equirecon.training.data import collate_transform_pairs
from equirecon.training.masking import BlockMaskGenerator

# ---------------------------------------------------------------------------------------------- losses


def test_dino_loss_equals_its_formula_on_a_hand_computed_example():
    # One image, two views, two prototypes; student temperature 0.1 divides the student scores.
    student = torch.tensor([[[0.0, 0.0]], [[0.1 * math.log(3.0), 0.0]]])  # softmax(s/0.1): [½, ½] and [¾, ¼]
    teacher = torch.tensor([[[1.0, 0.0]], [[0.5, 0.5]]])
    # Pairs (teacher view 0, student view 1): −ln ¾; (teacher view 1, student view 0): −(½ ln ½ + ½ ln ½) = ln 2.
    expected = (-math.log(0.75) + math.log(2.0)) / 2
    assert dino_cls_loss(student, teacher, student_temperature=0.1).item() == pytest.approx(expected, rel=1e-6)


def test_masked_patch_loss_averages_per_image_then_over_all_images():
    masks = torch.tensor([[[True, True, False], [False, False, False]]])  # (views=1, images=2, patches=3)
    student = torch.tensor([[0.0, 0.0], [math.log(3.0), 0.0]])  # the two masked tokens, temperature 1
    teacher = torch.tensor([[1.0, 0.0], [1.0, 0.0]])
    # Image 0: mean of −ln ½ and −ln ¾; image 1 has no masked token and counts 0; mean over the 2 images.
    expected = (math.log(2.0) - math.log(0.75)) / 2 / 2
    assert masked_patch_loss(student, teacher, masks, 1.0).item() == pytest.approx(expected, rel=1e-6)


def test_koleo_matches_a_direct_computation():
    embeddings = torch.randn(12, 5, generator=torch.Generator().manual_seed(1))
    normalised = embeddings / embeddings.norm(dim=1, keepdim=True)
    distances = torch.cdist(normalised.double(), normalised.double())
    distances.fill_diagonal_(float("inf"))
    expected = -torch.log(distances.min(dim=1).values + 1e-8).mean()
    assert koleo_loss(embeddings).item() == pytest.approx(expected.item(), rel=1e-5)
    # Spreading the points apart lowers it.
    assert koleo_loss(torch.eye(12)) < koleo_loss(embeddings)


# ---------------------------------------------------------------------------------------------- the model's loss


@pytest.mark.parametrize("objective", ["dino", "ibot", "dinov2"])
def test_the_model_loss_is_the_objective_formula(objective):
    # Rebuild the loss from the student's and teacher's features with the functions above.
    set_seed(0)
    model = EquiReconForPreTraining(dino_config(objective, reconstruction_weight=0.0)).eval()
    inputs = pretraining_batch(masked=objective != "dino")
    out = model(**inputs)
    views = torch.cat([inputs["pixel_values"], inputs["transformed_pixel_values"]])
    masks = inputs.get("bool_masked_pos")
    with torch.no_grad():
        student_masks = masks.transpose(0, 1).flatten(0, 1) if masks is not None else None
        student = model.equirecon(views, bool_masked_pos=student_masks).invariant_embeds.unflatten(0, (2, 4))
        teacher = model.teacher.equirecon(views).invariant_embeds.unflatten(0, (2, 4))
        heads = model.ssl_objective.heads
        temperature = model.ssl_objective.teacher_temperature()
        teacher_probs = F.softmax(heads.cls(teacher[:, :, 0]) / temperature, dim=-1)  # centre still 0
        expected = dino_cls_loss(heads.cls(student[:, :, 0]), teacher_probs, 0.1)
        if objective == "dinov2":
            expected = expected + 0.1 * (koleo_loss(student[0, :, 0]) + koleo_loss(student[1, :, 0]))
        if objective != "dino":
            view_masks = masks.transpose(0, 1)
            patch_probs = F.softmax(heads.cls(teacher[:, :, 1:][view_masks]) / temperature, dim=-1)
            expected = expected + masked_patch_loss(
                heads.cls(student[:, :, 1:][view_masks]), patch_probs, view_masks, 0.1
            )
    assert out.ssl_loss.item() == pytest.approx(expected.item(), rel=1e-5)


def test_a_separate_patch_head_and_sinkhorn_knopp_train():
    model = EquiReconForPreTraining(dino_config("dinov2", ibot_separate_head=True, dino_centering="sinkhorn_knopp"))
    assert model.ssl_objective.heads.patch is not None and model.teacher.heads.patch is not None
    out = model(**pretraining_batch(masked=True))
    out.loss.backward()
    assert model.ssl_objective.heads.patch.mlp[0].weight.grad is not None
    model.update_teacher(model.config.teacher_momentum)
    for centering in (model.ssl_objective.cls_centering, model.ssl_objective.patch_centering):
        assert torch.count_nonzero(centering.center) == 0  # no EMA centre with Sinkhorn-Knopp
        assert centering._pending is None


# ---------------------------------------------------------------------------------------------- inputs


def test_masked_objectives_refuse_a_batch_without_masks_and_dino_refuses_masks():
    with pytest.raises(ValueError, match="ssl_objective 'ibot' distils masked patch tokens: pass `bool_masked_pos`"):
        EquiReconForPreTraining(dino_config("ibot"))(**pretraining_batch())
    with pytest.raises(ValueError, match="ssl_objective 'dino' does not mask patch tokens"):
        EquiReconForPreTraining(dino_config("dino"))(**pretraining_batch(masked=True))
    bad = pretraining_batch(masked=True)
    bad["bool_masked_pos"] = bad["bool_masked_pos"][:, 0]
    with pytest.raises(ValueError, match=r"`bool_masked_pos` has shape \(4, 16\), expected \(4, 2, 16\)"):
        EquiReconForPreTraining(dino_config("ibot"))(**bad)


def test_masked_pairs_are_left_out_of_the_reconstruction_loss():
    model = EquiReconForPreTraining(dino_config("ibot")).eval()
    inputs = pretraining_batch(masked=True)  # pairs 0 and 1 masked
    with torch.no_grad():
        out = model(**inputs, output_reconstructions=True)
        unmasked_only = F.mse_loss(out.reconstructions[2:], inputs["intermediate_pixel_values"][2:])
    assert out.reconstruction_loss.item() == pytest.approx(unmasked_only.item(), rel=1e-5)


def test_block_masks_stay_in_range_and_mask_pairs_together():
    generator = BlockMaskGenerator(14, ratio_range=(0.1, 0.5), probability=0.5)
    rng = np.random.default_rng(0)
    masks = np.stack([generator(rng) for _ in range(400)])  # (pairs, 2, 196)
    counts = masks.sum(axis=-1)
    masked_pairs = counts.sum(axis=1) > 0
    assert 0.4 < masked_pairs.mean() < 0.6
    assert (counts[masked_pairs] > 0).all()  # both views of a masked pair are masked
    assert (counts[~masked_pairs] == 0).all()
    ratios = counts[masked_pairs] / 196
    assert ratios.max() <= 0.5 and ratios.min() >= 0.05
    assert 0.2 < ratios.mean() < 0.35
    # Blocks, not scattered patches: most masked patches have a masked neighbour.
    grid = masks[masked_pairs][:, 0].reshape(-1, 14, 14)
    neighbour = np.zeros_like(grid)
    neighbour[:, 1:] |= grid[:, :-1]
    neighbour[:, :-1] |= grid[:, 1:]
    assert (neighbour & grid).sum() / grid.sum() > 0.8
    with pytest.raises(ValueError, match="ratio_range"):
        BlockMaskGenerator(14, ratio_range=(0.5, 0.1))


def test_the_pair_stream_carries_masks_of_the_configured_grid():
    config = dino_config("ibot")
    generator = BlockMaskGenerator.from_config(config)
    assert (generator.grid_size, generator.ratio_range, generator.probability) == (4, (0.1, 0.5), 0.5)
    examples = list(pair_stream(mask_generator=generator).take(6))
    collated = collate_transform_pairs(examples)
    assert collated["bool_masked_pos"].shape == (6, 2, 16) and collated["bool_masked_pos"].dtype == torch.bool


# ---------------------------------------------------------------------------------------------- multi-crop


def test_local_crops_join_the_cls_distillation_through_the_student_only():
    model = EquiReconForPreTraining(dino_config("dino")).eval()
    inputs = pretraining_batch()
    local = torch.randn(4, 3, 3, 16, 16, generator=torch.Generator().manual_seed(5))
    seen_by_teacher = []
    model.teacher.equirecon.register_forward_hook(lambda module, args, output: seen_by_teacher.append(args[0].shape))
    with torch.no_grad():
        out = model(**inputs, local_pixel_values=local)
        views = torch.cat([inputs["pixel_values"], inputs["transformed_pixel_values"]])
        student = model.equirecon(views).invariant_embeds[:, 0].unflatten(0, (2, 4))
        local_cls = model.equirecon(local.flatten(0, 1)).invariant_embeds[:, 0].unflatten(0, (4, 3)).transpose(0, 1)
        teacher = model.teacher.equirecon(views).invariant_embeds[:, 0].unflatten(0, (2, 4))
        heads, temperature = model.ssl_objective.heads, model.ssl_objective.teacher_temperature()
        teacher_probs = F.softmax(heads.cls(teacher) / temperature, dim=-1)
        expected = dino_cls_loss(heads.cls(torch.cat([student, local_cls])), teacher_probs, 0.1)  # 5 views, 2 global
        without = model(**inputs)
    assert out.ssl_loss.item() == pytest.approx(expected.item(), rel=1e-5)
    assert seen_by_teacher[0] == (8, 3, 32, 32)  # the global views only
    assert out.reconstruction_loss.item() == pytest.approx(without.reconstruction_loss.item())
    with pytest.raises(ValueError, match="needs a DINO-family ssl_objective, got 'vicreg'"):
        EquiReconForPreTraining(tiny_config())(**inputs, local_pixel_values=local)
    with pytest.raises(ValueError, match=r"`local_pixel_values` has shape \(4, 3, 16, 16\)"):
        model(**inputs, local_pixel_values=local[:, 0])


def test_the_pair_stream_carries_local_crops():
    from equirecon.training.views import TransformPairMaker

    maker = TransformPairMaker(TRANSFORMATION, size=32, seed=0, rank=0, num_local_crops=3, local_size=16)
    example = maker(np.random.default_rng(0).integers(0, 255, (80, 96, 3), dtype=np.uint8))
    crops = example["local_pixel_values"]
    assert crops.shape == (3, 3, 16, 16) and example["pixel_values"].shape == (3, 32, 32)
    assert not torch.allclose(crops[0], crops[1])
    collated = collate_transform_pairs([example, example])
    assert collated["local_pixel_values"].shape == (2, 3, 3, 16, 16)

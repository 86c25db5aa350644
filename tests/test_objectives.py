import math
import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from equirecon.modeling.invariance_objectives import (
    SimCLRObjective,
    VICRegObjective,
    build_mlp,
    info_nce_loss,
    off_diagonal,
    vicreg_loss,
)


def test_off_diagonal_takes_every_entry_but_the_diagonal():
    matrix = torch.arange(9.0).view(3, 3)
    assert sorted(off_diagonal(matrix).tolist()) == [1, 2, 3, 5, 6, 7]


def test_vicreg_variance_term_is_zero_for_unit_variance_features():
    features = torch.randn(512, 16)
    features = (features - features.mean(0)) / features.std(0)
    _, terms = vicreg_loss(features, features.clone())
    assert terms["variance"].item() == 0.0
    assert terms["invariance"].item() == 0.0


def test_vicreg_variance_term_is_one_for_collapsed_features():
    collapsed = torch.ones(64, 8)
    _, terms = vicreg_loss(collapsed, collapsed)
    assert terms["variance"].item() == pytest.approx(1 - math.sqrt(1e-4), abs=1e-6)


def test_vicreg_covariance_is_zero_for_decorrelated_features_and_positive_otherwise():
    # Columns of a Hadamard matrix are orthogonal and centred (apart from the first, dropped).
    hadamard = torch.tensor([[1.0]])
    for _ in range(4):
        hadamard = torch.cat([torch.cat([hadamard, hadamard], 1), torch.cat([hadamard, -hadamard], 1)], 0)
    decorrelated = hadamard[:, 1:]
    _, terms = vicreg_loss(decorrelated, decorrelated)
    assert terms["covariance"].item() == pytest.approx(0.0, abs=1e-10)
    correlated = torch.randn(64, 1).repeat(1, 4)
    _, terms = vicreg_loss(correlated, correlated)
    assert terms["covariance"].item() > 0.5


def test_vicreg_weights_combine_the_terms():
    first, second = torch.randn(32, 8), torch.randn(32, 8)
    loss, terms = vicreg_loss(first, second, sim_coeff=2.0, std_coeff=3.0, cov_coeff=4.0)
    expected = 2 * terms["invariance"] + 3 * terms["variance"] + 4 * terms["covariance"]
    assert torch.allclose(loss, expected)


def test_info_nce_of_identical_views_with_distinct_negatives_is_below_chance():
    batch = 16
    embeddings = torch.eye(batch, 32)  # distinct, orthogonal
    loss = info_nce_loss(embeddings, embeddings.clone(), temperature=0.1)
    assert loss.item() < math.log(2 * batch - 1)
    # Positives at cosine 1, the 2B-2 negatives at 0: -log(e^10 / (e^10 + 30)).
    assert loss.item() == pytest.approx(math.log1p((2 * batch - 2) * math.exp(-10)), rel=1e-4)


def test_info_nce_of_uninformative_embeddings_is_chance():
    batch = 8
    same = torch.ones(batch, 4)
    loss = info_nce_loss(same, same, temperature=0.5)
    assert loss.item() == pytest.approx(math.log(2 * batch - 1), rel=1e-5)


def test_build_mlp_ends_in_a_plain_linear_layer():
    mlp = build_mlp(8, [16, 16, 4])
    kinds = [type(m).__name__ for m in mlp]
    assert kinds == ["Linear", "BatchNorm1d", "ReLU", "Linear", "BatchNorm1d", "ReLU", "Linear"]
    assert mlp(torch.randn(5, 8)).shape == (5, 4)


@pytest.mark.parametrize("objective", [VICRegObjective(8, [16, 16], 10, 10, 1), SimCLRObjective(8, [16, 8], 0.1)])
def test_objectives_return_finite_differentiable_losses(objective):
    first = torch.randn(6, 8, requires_grad=True)
    loss = objective(first, torch.randn(6, 8))
    loss.backward()
    assert torch.isfinite(loss) and first.grad is not None and first.grad.abs().sum() > 0


def _distributed_losses(rank: int, world_size: int, port: int, first, second, queue) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world_size)
    try:
        local = slice(rank * 4, (rank + 1) * 4)
        a = first[local].clone().requires_grad_(True)
        b = second[local].clone()
        nce = info_nce_loss(a, b, temperature=0.2)
        vic, _ = vicreg_loss(a, b)
        nce.backward()
        queue.put((rank, nce.item(), vic.item(), a.grad.clone()))
    finally:
        dist.destroy_process_group()


def test_global_batch_losses_match_a_single_process_over_the_whole_batch():
    """Two gloo processes with half the batch each see the same negatives and statistics as one process with all of
    it: the mean of their losses is the single-process loss, and gradients flow back through the gather."""
    torch.manual_seed(0)
    first, second = torch.randn(8, 6), torch.randn(8, 6)
    context = mp.get_context("spawn")
    queue = context.Queue()
    port = 29500 + os.getpid() % 1000
    processes = [
        context.Process(target=_distributed_losses, args=(rank, 2, port, first, second, queue)) for rank in range(2)
    ]
    for process in processes:
        process.start()
    results = sorted((queue.get(timeout=120) for _ in processes), key=lambda r: r[0])
    for process in processes:
        process.join(timeout=60)

    reference_first = first.clone().requires_grad_(True)
    reference_nce = info_nce_loss(reference_first, second, temperature=0.2)
    reference_nce.backward()
    reference_vic, _ = vicreg_loss(first, second)

    assert sum(r[1] for r in results) / 2 == pytest.approx(reference_nce.item(), rel=1e-5)
    assert sum(r[2] for r in results) / 2 == pytest.approx(reference_vic.item(), rel=1e-5)
    # Each rank's gradient holds both ranks' losses (sum of two means): twice the single-process gradient.
    for rank, _, _, grad in results:
        assert torch.allclose(grad, 2 * reference_first.grad[rank * 4 : (rank + 1) * 4], atol=1e-6)

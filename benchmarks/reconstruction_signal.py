"""How strongly does the reconstruction task pull on the encoder, from the first step?

For the `tiny` preset on the embedded photos (g = rotation, K = 2, batch 32, AdamW at the default run's learning
rate), this trains the model on `ssl_loss + λ·reconstruction_loss` and, at the listed steps, measures on one fixed
batch the norms of the two terms' gradients with respect to the encoder's weights, and their ratio
λ·‖∇ reconstruction‖ / ‖∇ ssl‖. Two decoder initialisations are compared in the same run:

    fan-in     the decoders' fan-in scaled initialisation (the package's)
    0.02       every decoder layer a truncated normal of std 0.02, as the rest of the heads (the earlier default)

The reconstruction loss is a per-pixel mean (λ = 1). A per-image sum is the same loss times 3·H·W (12 288 at 64²,
150 528 at 224²), so its ratio is the printed one times that factor: λ would have to shrink by the same factor to
keep the balance, and would change meaning with the image size.

    python benchmarks/reconstruction_signal.py              # steps 0 and 50, ~3 min on 2 CPU cores
    python benchmarks/reconstruction_signal.py --steps 0 10 50 100
"""

from __future__ import annotations

import argparse
import os

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402
from transformers import set_seed  # noqa: E402

from equirecon import EquiReconConfig, EquiReconForPreTraining  # noqa: E402
from equirecon.imaging.decoding import to_rgb_uint8  # noqa: E402
from equirecon.training import TransformationConfig, TransformPairMaker, load_images, make_transformed_pair  # noqa: E402


def batches(photos: list[np.ndarray], maker: TransformPairMaker, batch_size: int, seed: int):
    rng = np.random.default_rng(seed)
    while True:
        examples = [maker(photos[i]) for i in rng.integers(0, len(photos), size=batch_size)]
        yield {key: torch.stack([e[key] for e in examples]) for key in examples[0]}


def losses(model: EquiReconForPreTraining, batch: dict[str, torch.Tensor], maker: TransformPairMaker, k: int):
    pair = make_transformed_pair(
        batch["base_pixel_values"],
        batch["transform_params"],
        maker.transformation,
        k,
        image_mean=maker.image_mean,
        image_std=maker.image_std,
        output_size=maker.size,
    )
    return model(
        pixel_values=batch["pixel_values"],
        transformed_pixel_values=pair.transformed,
        intermediate_pixel_values=pair.targets,
        intermediate_mask=pair.target_masks,
    )


def gradient_norm(loss: torch.Tensor, parameters: list[nn.Parameter]) -> float:
    grads = torch.autograd.grad(loss, parameters, retain_graph=True, allow_unused=True)
    return float(torch.sqrt(sum((g.float() ** 2).sum() for g in grads if g is not None)))


def measure(init: str, args: argparse.Namespace, photos: list[np.ndarray]) -> list[dict[str, float]]:
    set_seed(args.seed)
    config = EquiReconConfig.from_preset("tiny", transformation={"family": "rotation"})
    model = EquiReconForPreTraining(config)
    if init == "0.02":
        for decoder in model.decoders:
            for module in decoder.modules():
                if isinstance(module, (nn.Linear, nn.Conv2d)):
                    nn.init.trunc_normal_(module.weight, std=0.02)
                    nn.init.zeros_(module.bias)
    maker = TransformPairMaker(TransformationConfig(family="rotation"), size=config.image_size, seed=args.seed)
    probe_batch = next(batches(photos, maker, args.batch_size, seed=10_000 + args.seed))
    stream = batches(photos, maker, args.batch_size, seed=args.seed)
    encoder = [p for p in model.equirecon.backbone.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.learning_rate, weight_decay=0.05)
    rows, step = [], 0
    for target in sorted(args.steps):
        while step < target:
            model.train()
            optimizer.zero_grad(set_to_none=True)
            losses(model, next(stream), maker, config.num_intermediates).loss.backward()
            optimizer.step()
            step += 1
        model.train()
        out = losses(model, probe_batch, maker, config.num_intermediates)
        ssl, recon = gradient_norm(out.ssl_loss, encoder), gradient_norm(out.reconstruction_loss, encoder)
        with torch.no_grad():
            decoder_input = torch.cat([out.equivariant_embeds[0], out.equivariant_embeds[1]], dim=-1)
            grid = (config.image_size // config.patch_size,) * 2
            output_std = float(model.decoders[0](decoder_input, grid).std())
        rows.append(
            {
                "init": init,
                "step": step,
                "ssl_loss": out.ssl_loss.item(),
                "reconstruction_loss": out.reconstruction_loss.item(),
                "decoder_output_std": output_std,
                "grad_ssl": ssl,
                "grad_reconstruction": recon,
                "ratio": config.reconstruction_weight * recon / ssl,
            }
        )
        print(rows[-1], flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, nargs="+", default=[0, 50])
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--learning-rate", type=float, default=5e-4)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    photos = [to_rgb_uint8(example["image"]) for example in load_images("embedded", split="train")]
    rows = [row for init in ("0.02", "fan-in") for row in measure(init, args, photos)]
    print()
    print("| decoder init | step | ssl loss | recon loss | decoder output std | ‖∇ssl‖ | ‖∇recon‖ | λ·ratio |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['init']} | {r['step']} | {r['ssl_loss']:.3f} | {r['reconstruction_loss']:.3f} | "
            f"{r['decoder_output_std']:.2e} | {r['grad_ssl']:.3e} | {r['grad_reconstruction']:.3e} | {r['ratio']:.2e} |"
        )


if __name__ == "__main__":
    main()

"""Why the paper's MLP settings reach only ~0.89 test accuracy on the 8,000 shared MNIST digits (results/README.md).

For each run given, at its epoch-250 and final checkpoints, the test accuracy of the trained network with the test
split standardised per pixel by (a) its own statistics (`pixel_split`, the official code) and (b) the training
statistics (`pixel`), and how extreme standardised pixels get: the per-pixel training std, the largest |z| of a
test pixel under (b), and the share of test images with some |z| > 10 under (b).

    python results/scripts/test_standardization.py runs/mnist_mlp/0 runs/mnist_mlp/1 runs/mnist_mlp/2
"""

import sys
from pathlib import Path

import torch
from omegaconf import OmegaConf

from dnc_cli.data import load_dataset
from dnc_cli.models.networks import build_model
from dnc_cli.runs import checkpoint_epochs, checkpoint_name, read_run_config


def accuracy(model, x, labels) -> float:
    with torch.no_grad():
        return float((model(x).argmax(1) == labels).double().mean())


def main(run_dirs: list[str]) -> None:
    print("| run | epoch | test acc, own statistics (pixel_split) | test acc, training statistics (pixel) |")
    print("|---|---|---|---|")
    for run_dir in map(Path, run_dirs):
        cfg = read_run_config(run_dir)
        by_mode = {}
        for mode in ("pixel_split", "pixel"):
            cfg.dataset.standardize = mode
            by_mode[mode] = load_dataset(cfg.dataset, cfg.seed)
        model = build_model(cfg.model, by_mode["pixel"].input_shape, by_mode["pixel"].num_classes).eval()
        epochs = checkpoint_epochs(run_dir)
        for epoch in sorted({e for e in epochs if e == 250} | {epochs[-1]}):
            state = torch.load(run_dir / "checkpoints" / checkpoint_name(epoch), weights_only=True)["model"]
            model.load_state_dict(state)
            own, train = (accuracy(model, by_mode[m].test.x, by_mode[m].test.labels) for m in ("pixel_split", "pixel"))
            print(f"| {run_dir} | {epoch} | {own:.4f} | {train:.4f} |")
    # the same digits for every seed: the pixel statistics once
    cfg.dataset.standardize = "none"
    raw = load_dataset(cfg.dataset, cfg.seed)
    std = raw.train.x.flatten(1).std(0)
    z = ((raw.test.x.flatten(1) - raw.train.x.flatten(1).mean(0)) / std).where(std > 0, 0.0)
    print(f"\ntraining pixels: {int((std == 0).sum())} constant, {int(((std > 0) & (std < 5)).sum())} with "
          f"0 < std < 5 (of 255; median std {float(std.median()):.1f})")
    train_z = ((raw.train.x.flatten(1) - raw.train.x.flatten(1).mean(0)) / std).where(std > 0, 0.0)
    print(f"test pixels standardised with the training statistics: max |z| = {float(z.abs().max()):.0f}; "
          f"{float((z.abs() > 10).any(1).double().mean()):.1%} of test images have a pixel with |z| > 10 "
          f"(training images: {float(train_z.abs().gt(10).any(1).double().mean()):.1%})")
    rare = (std > 0) & (std < 5)
    share = (train_z[:, rare] ** 2).sum(1) / (train_z**2).sum(1)
    print(f"share of a standardised training image's squared norm in those {int(rare.sum())} rare pixels: mean "
          f"{float(share.mean()):.1%}, above 50% in {float((share > 0.5).double().mean()):.1%} of the images")
    print(OmegaConf.to_yaml({"dataset": {"n_train": cfg.dataset.n_train}}).strip())


if __name__ == "__main__":
    main(sys.argv[1:])

"""Why the teacher cannot use the printed ε0 = 10: dead ReLUs within the first 50 steps.

    .venv/bin/python experiments/hinton2015/tools/teacher_step_size.py [--lr 10] [--steps 400]
    [--constrain-output]

Trains the teacher net (784-1200-1200-10, ReLU, 20%/50% dropout, max-norm √15 on the hidden
units, N(0, 0.01²) init, 2-pixel jitter) with the dropout paper's optimizer at a fixed epoch-0
schedule on 20,000 training images, and every 50 steps prints the training loss, the share of
each hidden layer's units that no example of the batch activates, the most negative first-layer
bias and the output layer's weight norm. Training data only; nothing here looks at test data.
"""

from __future__ import annotations

import argparse

import torch

from darkknowledge.config import load_config
from darkknowledge.data import jitter
from darkknowledge.models import build_model
from darkknowledge.train import prepare_data
from darkknowledge.train.optim import build_optimizer, hyperparams_at, set_hyperparams


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--lr", type=float, default=10.0, help="ε0")
    p.add_argument("--steps", type=int, default=400)
    p.add_argument(
        "--constrain-output",
        action="store_true",
        help="also max-norm the output units (not in the paper)",
    )
    args = p.parse_args()
    cfg = load_config(
        "experiments/hinton2015/configs/teacher_1200.yaml",
        [f"optim.lr={args.lr}", "data.train_size=20000", "data.test_size=100"],
    )
    torch.manual_seed(0)
    train = prepare_data(cfg.data).train
    net = build_model("mlp", {k: v for k, v in cfg.model.items() if k != "name"}, 784, 10)
    opt = build_optimizer(cfg.optim, net.parameters())
    g = torch.Generator().manual_seed(1)
    for step in range(args.steps):
        set_hyperparams(opt, hyperparams_at(cfg.optim, 0, step, 10**6))
        pos = torch.randint(0, len(train), (cfg.optim.batch_size,), generator=g)
        x = train.features(images=jitter(train.images[pos], cfg.data.jitter, g))
        loss = torch.nn.functional.cross_entropy(net(x), train.labels[pos])
        opt.zero_grad()
        loss.backward()
        opt.step()
        net.project_max_norm_()
        if args.constrain_output:
            with torch.no_grad():
                net.layers[-1].weight.renorm_(2, 0, cfg.model["max_norm"])
        if step % 50 == 0 or step == args.steps - 1:
            with torch.no_grad():
                h1 = torch.relu(net.layers[0](x))
                h2 = torch.relu(net.layers[1](h1))
            dead = [(h.sum(0) == 0).float().mean().item() for h in (h1, h2)]
            print(
                f"ε0 {args.lr:g} step {step:4d}: loss {loss.item():.3f}, units never active: layer "
                f"1 {dead[0]:.0%}, layer 2 {dead[1]:.0%}; "
                f"min layer-1 bias {net.layers[0].bias.min().item():.1f}, output weight norm "
                f"{net.layers[-1].weight.norm().item():.1f}"
            )


if __name__ == "__main__":
    main()

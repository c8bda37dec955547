"""What lambda means: where AdamW + the method converges, against the exact group-lasso solution.

    python experiments/lambda_meaning.py [--lam 0.05] [--steps 3000]

A small group-lasso regression (a 1x1 conv = a linear layer, 12 input-channel groups of 6 weights, full batch):
    min_W  1/(2n) ||conv(X; W) - Y||^2 + lambda * sum_c sqrt(p_g) ||W[:, c]||.
The exact solution for any lambda comes from many float64 proximal-gradient (ISTA) steps. AdamW with a
decaying learning rate is then run with (a) the Adam-weighted prox alone, (b) the penalty gradient *and* the
prox (the seed's recipe, ``sparsity=paper``), (c) the plain prox, and the distance of each end point to the
exact solutions for lambda and 2*lambda is printed. At a fixed point of (b) the gradient contains
lambda*dOmega and the prox adds lambda*dOmega again: it solves the problem for 2*lambda.
"""

from __future__ import annotations

import argparse

import torch
from torch import nn

from lightning_sparse_mtl.sparsity import GroupSparsity


def problem(seed: int = 0, n: int = 256, groups: int = 12, out: int = 6):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, groups, 1, 1, generator=g, dtype=torch.float64)
    w_true = torch.randn(out, groups, 1, 1, generator=g, dtype=torch.float64)
    w_true[:, groups // 2 :] *= 0.05  # half the groups carry little signal
    y = torch.nn.functional.conv2d(x, w_true) + 0.1 * torch.randn(n, out, 1, 1, generator=g, dtype=torch.float64)
    return x, y


def loss_of(w: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return 0.5 * (torch.nn.functional.conv2d(x, w) - y).square().sum() / x.shape[0]


def exact_group_lasso(x: torch.Tensor, y: torch.Tensor, lam: float, out: int = 6, iters: int = 20000) -> torch.Tensor:
    """ISTA in float64 with step 1/L: converges to the unique minimiser (X has full column rank)."""
    xs, ys = x.flatten(1), y.flatten(1)  # (n, I), (n, O); the loss is 1/(2n) ||xs W^T - ys||^2
    gram, cross = xs.T @ xs / x.shape[0], ys.T @ xs / x.shape[0]  # (I, I), (O, I)
    step = 1.0 / float(torch.linalg.eigvalsh(gram).max())
    w = torch.zeros(out, x.shape[1], dtype=torch.float64)
    thresh = step * lam * out**0.5
    for _ in range(iters):
        z = w - step * (w @ gram - cross)
        w = z * torch.clamp(1 - thresh / torch.linalg.vector_norm(z, dim=0).clamp_min(1e-300), min=0)
    return w.view(out, -1, 1, 1)


def adam_run(x, y, lam: float, prox: str, penalty_grad: bool, steps: int, lr: float = 1e-2) -> torch.Tensor:
    conv = nn.Conv2d(x.shape[1], y.shape[1], 1, bias=False).double()
    torch.nn.init.normal_(conv.weight, std=0.3, generator=torch.Generator().manual_seed(1))
    opt = torch.optim.AdamW(conv.parameters(), lr=lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda t: (1e-3) ** (t / steps))  # lr -> lr/1000
    GroupSparsity.from_module(conv, lam, prox, exclude_image_conv=False, penalty_grad=penalty_grad).attach(opt)
    for _ in range(steps):
        opt.zero_grad()
        loss_of(conv.weight, x, y).backward()
        opt.step()
        sched.step()
    return conv.weight.detach()


def compare(lam: float = 0.05, steps: int = 3000) -> dict[str, dict[str, float]]:
    """{variant: {"to lambda", "to 2 lambda", "zero groups"}}: relative distances to the exact solutions."""
    x, y = problem()
    exact = {"to lambda": exact_group_lasso(x, y, lam), "to 2 lambda": exact_group_lasso(x, y, 2 * lam)}
    variants = {
        "adam prox alone (default)": ("adam", False),
        "penalty grad + adam prox (paper)": ("adam", True),
        "plain prox alone": ("plain", False),
    }
    rows = {}
    for name, (prox, pen) in variants.items():
        w = adam_run(x, y, lam, prox, pen, steps)
        row = {k: float(torch.linalg.vector_norm(w - e) / torch.linalg.vector_norm(e)) for k, e in exact.items()}
        row["zero groups"] = int((torch.linalg.vector_norm(w, dim=(0, 2, 3)) == 0).sum())
        rows[name] = row
    rows["exact (ISTA)"] = {
        "to lambda": 0.0,
        "to 2 lambda": float(
            torch.linalg.vector_norm(exact["to lambda"] - exact["to 2 lambda"])
            / torch.linalg.vector_norm(exact["to 2 lambda"])
        ),
        "zero groups": int((torch.linalg.vector_norm(exact["to lambda"], dim=(0, 2, 3)) == 0).sum()),
    }
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lam", type=float, default=0.05)
    parser.add_argument("--steps", type=int, default=3000)
    args = parser.parse_args()
    rows = compare(args.lam, args.steps)
    print(f"{'variant':36s} {'rel. dist to W*(lam)':>22s} {'to W*(2 lam)':>14s} {'zero groups':>12s}")
    for name, r in rows.items():
        print(f"{name:36s} {r['to lambda']:22.2e} {r['to 2 lambda']:14.2e} {r['zero groups']:12d}")


if __name__ == "__main__":
    main()

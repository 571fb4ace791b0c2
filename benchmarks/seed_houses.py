"""The original plain house-price recipe, reproduced as written, for comparison.

FirstNeuralNet (10-5-1, Xavier), Adam with its default LR, full batch, the
loss sqrt(MSE(log1p(output), log1p(price))) on the raw price output, up to
100,000 iterations, and its early stop: every 1,000 iterations, stop when the
held-out loss moved by less than 0.001. It runs on the pipeline's prepared
features so that only the recipe differs.

    python -m benchmarks.seed_houses [--seeds 0 1 2 3 4]
"""

from __future__ import annotations

import argparse
import json
import math
import time

import torch
from torch import nn

from dlpipe.data.houses_prepared import load_split


class FirstNeuralNet(nn.Module):
    def __init__(self, n_input: int):
        super().__init__()
        self.fc1, self.fc2, self.fc3 = nn.Linear(n_input, 10), nn.Linear(10, 5), nn.Linear(5, 1)
        for layer in (self.fc1, self.fc2, self.fc3):
            nn.init.xavier_uniform_(layer.weight)

    def forward(self, x):
        return self.fc3(self.fc2(self.fc1(x).clamp(min=0)).clamp(min=0))


def seed_loop(x_train, price_train, x_val, price_val, seed: int, n_iterations: int = 100_000) -> dict:
    torch.manual_seed(seed)
    net = FirstNeuralNet(x_train.shape[1])
    criterion, optimizer = nn.MSELoss(), torch.optim.Adam(net.parameters())
    y_train, y_val = price_train[:, None], price_val[:, None]
    last_loss_test, start, i = 0.0, time.perf_counter(), 0
    for i in range(n_iterations):
        loss = torch.sqrt(criterion(torch.log1p(net(x_train)), torch.log1p(y_train)))
        if i % 1000 == 0:
            with torch.no_grad():
                loss_test = torch.sqrt(criterion(torch.log1p(net(x_val)), torch.log1p(y_val))).item()
            if abs(last_loss_test - loss_test) < 0.001:
                break
            last_loss_test = loss_test
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        final = torch.sqrt(criterion(torch.log1p(net(x_val)), torch.log1p(y_val))).item()
    return {"seed": seed, "iterations": i + 1, "val_rmsle": final, "nan": math.isnan(final),
            "seconds": time.perf_counter() - start}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    args = parser.parse_args()
    torch.set_num_threads(1)
    train, val = load_split("train"), load_split("val")
    runs = [seed_loop(train["x"], torch.expm1(train["y"]), val["x"], torch.expm1(val["y"]), s) for s in args.seeds]
    for run in runs:
        print(json.dumps(run))
    ok = [r["val_rmsle"] for r in runs if not r["nan"]]
    print(json.dumps({"runs": len(runs), "nan_runs": len(runs) - len(ok),
                      "best_val_rmsle": min(ok) if ok else None}))


if __name__ == "__main__":
    main()

"""Train the lenet-mnist built-in and write its checkpoint (src/bitsieve/zoo/lenet_mnist.pt).

Run with one thread so that the result is bit-for-bit reproducible:
    OMP_NUM_THREADS=1 python scripts/train_lenet.py [--epochs 2] [--seed 0] [-o PATH]
"""

from __future__ import annotations

import argparse
import time

import torch

from bitsieve.zoo import lenet


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("-o", "--output", default=str(lenet.CHECKPOINT))
    args = parser.parse_args()
    torch.set_num_threads(1)
    start = time.perf_counter()
    module = lenet.train(epochs=args.epochs, seed=args.seed)
    seconds = time.perf_counter() - start
    torch.save(module.state_dict(), args.output)
    print(f"trained {args.epochs} epochs (seed {args.seed}) in {seconds:.1f} s")
    print(f"MNIST test accuracy {lenet.accuracy(module) * 100:.2f} %  ->  {args.output}")


if __name__ == "__main__":
    main()

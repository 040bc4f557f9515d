"""Bits/dim of the 10,000 Fashion-MNIST test images through Python against `realnvp eval`
on the same model, alternating rounds.

    python crates/realnvp-py/tests/speed.py --run RUN [--rounds 3] [--bin target/release/realnvp]

Python's time covers reading the IDX file, loading the model and scoring; `realnvp eval`'s
the whole process (it also reads the training split). Both use the run's
`eval_batch_size`. The test suite calls `compare` on a tiny model.
"""

import argparse
import re
import subprocess
import time
from pathlib import Path

import realnvp
from conftest import fashion_mnist_file, read_idx, realnvp_bin


def compare(run: Path, rounds: int, binary: Path) -> dict:
    """Seconds per round of each side, alternating, `realnvp eval` first."""
    config = (run / "config.toml").read_text()
    batch = int(re.search(r"eval_batch_size\s*=\s*(\d+)", config).group(1))
    path = fashion_mnist_file("t10k-images-idx3-ubyte")
    python, cli = [], []
    for _ in range(rounds):
        start = time.perf_counter()
        subprocess.run(
            [str(binary), "eval", "--run", str(run), "--json"],
            check=True,
            capture_output=True,
        )
        cli.append(time.perf_counter() - start)
        start = time.perf_counter()
        images = read_idx(path).reshape(-1, 1, 28, 28)
        bpd = realnvp.load(run).bits_per_dim(images, batch_size=batch)
        python.append(time.perf_counter() - start)
        assert bpd.shape == (10000,)
    return {"python": python, "eval": cli}


def summary(times: dict) -> str:
    best_python, best_eval = min(times["python"]), min(times["eval"])
    return (
        f"10,000 Fashion-MNIST test images: Python {best_python:.2f} s "
        f"({10000 / best_python:.0f} images/s), realnvp eval {best_eval:.2f} s "
        f"({10000 / best_eval:.0f} images/s), ratio {best_python / best_eval:.3f}; "
        f"rounds Python {[round(t, 2) for t in times['python']]}, "
        f"eval {[round(t, 2) for t in times['eval']]}"
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path, required=True)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--bin", type=Path, default=None)
    args = parser.parse_args()
    print(summary(compare(args.run, args.rounds, args.bin or realnvp_bin())))

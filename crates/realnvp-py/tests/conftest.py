"""Models trained for the tests by the `realnvp` binary, once per session.

`REALNVP_BIN` names the binary (default: the workspace's `target/release/realnvp`);
Fashion-MNIST is read from `REALNVP_FASHION_MNIST` (default: Debian's
dataset-fashion-mnist package).
"""

import gzip
import json
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[3]
FASHION_MNIST = Path(
    os.environ.get("REALNVP_FASHION_MNIST", "/usr/share/datasets/fashion-mnist")
)

# A model small enough to train for a few steps in seconds.
TINY = [
    "--set", "model.features=8",
    "--set", "model.res_blocks=1",
    "--set", "train.batch_size=16",
    "--set", "train.eval_examples=64",
    "--set", "train.samples=4",
    "--set", "train.log_every=1",
]


def realnvp_bin() -> Path:
    path = Path(os.environ.get("REALNVP_BIN", REPO / "target" / "release" / "realnvp"))
    if not path.is_file():
        pytest.fail(f"{path}: no realnvp binary; build it (cargo build --release -p realnvp-cli) or set REALNVP_BIN")
    return path


def run_cli(*args: str) -> subprocess.CompletedProcess:
    """Runs `realnvp ARGS`, failing the test with its stderr when it fails."""
    done = subprocess.run(
        [str(realnvp_bin()), *args], capture_output=True, text=True, cwd=REPO
    )
    if done.returncode != 0:
        pytest.fail(f"realnvp {' '.join(args)} failed:\n{done.stderr}")
    return done


def train(out: Path, *args: str) -> Path:
    run_cli("train", "--out", str(out), *args)
    assert (out / "export" / "model.safetensors").is_file()
    return out


def read_idx(path: Path) -> np.ndarray:
    """An IDX file (gzipped or not) as an array of its dtype and shape."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        data = f.read()
    dims = data[3]
    shape = [int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(dims)]
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * dims).reshape(shape)


def fashion_mnist_file(name: str) -> Path:
    for candidate in (FASHION_MNIST / f"{name}.gz", FASHION_MNIST / name):
        if candidate.is_file():
            return candidate
    pytest.skip(f"Fashion-MNIST not found in {FASHION_MNIST} (apt-get install dataset-fashion-mnist)")


@pytest.fixture(scope="session")
def fashion_test():
    """The 10,000 Fashion-MNIST test images `[N, 1, 28, 28]` uint8 and their labels."""
    images = read_idx(fashion_mnist_file("t10k-images-idx3-ubyte"))
    labels = read_idx(fashion_mnist_file("t10k-labels-idx1-ubyte"))
    return images.reshape(-1, 1, 28, 28), labels


@pytest.fixture(scope="session")
def image_run(tmp_path_factory, fashion_test):
    """A tiny unconditional Fashion-MNIST model, 3 steps."""
    out = tmp_path_factory.mktemp("runs") / "fashion"
    return train(out, "--config", "configs/fashion-mnist.toml", "--steps", "3", *TINY)


@pytest.fixture(scope="session")
def conditional_run(tmp_path_factory, fashion_test):
    """A tiny class-conditional Fashion-MNIST model, 3 steps."""
    out = tmp_path_factory.mktemp("runs") / "conditional"
    return train(
        out, "--config", "configs/fashion-mnist-conditional.toml", "--steps", "3", *TINY
    )


@pytest.fixture(scope="session")
def digits_run(tmp_path_factory):
    """A tiny model of the embedded digits (8x8, 17 levels), 3 steps."""
    out = tmp_path_factory.mktemp("runs") / "digits"
    return train(out, "--steps", "3", *TINY)


@pytest.fixture(scope="session")
def vector_run(tmp_path_factory):
    """A small two-moons vector model, 20 steps."""
    out = tmp_path_factory.mktemp("runs") / "moons"
    return train(
        out,
        "--config", "configs/moons.toml",
        "--steps", "20",
        "--set", "vector_model.hidden=16",
        "--set", "train.eval_every=20",
        "--set", "train.samples=100",
    )


def score_json(run: Path, input: str, *extra: str) -> list:
    """`realnvp score --json` as a list of records."""
    out = run_cli("score", "--run", str(run), "--input", input, "--json", *extra).stdout
    return [json.loads(line) for line in out.splitlines() if line.strip()]

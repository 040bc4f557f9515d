"""The `realnvp` Python package against models trained by the `realnvp` binary."""

import re
import shutil
import threading
import time

import numpy as np
import pytest

import realnvp
from conftest import realnvp_bin, score_json
from speed import compare, summary


# --- Loading ---------------------------------------------------------------------------


def test_a_run_directory_and_its_export_load_the_same_model(image_run):
    model = realnvp.load(image_run)
    assert model.kind == "image"
    assert model.shape == (1, 28, 28)
    assert model.dims == 784
    assert model.classes == 0
    assert model.levels == 256
    assert model.latent_shapes == [(2, 14, 14), (2, 14, 14)]
    assert model.config["kind"] == "image"
    assert model.config["features"] == 8
    assert model.path.endswith("export")
    assert "kind='image'" in repr(model) or 'kind="image"' in repr(model)
    same = realnvp.load(str(image_run / "export"))
    x = np.zeros((2, 1, 28, 28), np.uint8)
    assert np.array_equal(model.bits_per_dim(x), same.bits_per_dim(x))
    best = realnvp.load(image_run, best=True)
    assert best.path.endswith("best")


def test_help_shows_the_docstrings():
    assert "run directory" in realnvp.load.__doc__
    assert "bits per dimension" in realnvp.Model.bits_per_dim.__doc__.lower()
    signature = realnvp.Model.bits_per_dim.__text_signature__
    assert 'x, labels=None, *, dequantization="uniform", seed=0, batch_size=64' in signature


# --- Scores ----------------------------------------------------------------------------


def test_bits_per_dim_equal_the_cli_score_of_the_test_split(image_run, fashion_test):
    images, _ = fashion_test
    records = score_json(image_run, "data:test")
    assert [r["input"] for r in records[:2]] == ["data:test:0", "data:test:1"]
    cli = np.array([r["bits_per_dim"] for r in records])
    model = realnvp.load(image_run)
    bpd = model.bits_per_dim(images)
    assert bpd.dtype == np.float64 and bpd.shape == (10000,)
    assert np.max(np.abs(bpd - cli)) <= 1e-6
    nats = model.log_prob(images[:500])
    np.testing.assert_allclose(nats, -bpd[:500] * 784 * np.log(2), rtol=1e-5)
    other = model.bits_per_dim(images[:64], seed=1)
    assert np.all(other != bpd[:64]), "another seed, other noise"
    seven = np.array([r["bits_per_dim"] for r in score_json(image_run, "data:test", "--seed", "7")])
    assert np.max(np.abs(model.bits_per_dim(images, seed=7) - seven)) <= 1e-6


def test_scores_do_not_depend_on_batch_size_layout_or_container(image_run, fashion_test):
    images, _ = fashion_test
    x = images[:150]
    model = realnvp.load(image_run)
    reference = model.bits_per_dim(x)
    assert np.array_equal(model.bits_per_dim(x, batch_size=7), reference)
    channels_last = np.ascontiguousarray(x.transpose(0, 2, 3, 1))
    assert np.array_equal(model.bits_per_dim(channels_last, channels_last=True), reference)
    assert np.array_equal(model.bits_per_dim(x[:5].tolist()), reference[:5])
    strided = images[:300:2]
    assert np.array_equal(model.bits_per_dim(strided), model.bits_per_dim(strided.copy()))
    wider = x.astype(np.int64)
    assert np.array_equal(model.bits_per_dim(wider), reference)
    read_only = x.copy()
    read_only.flags.writeable = False
    assert np.array_equal(model.bits_per_dim(read_only), reference)
    centre = model.bits_per_dim(x, dequantization="centre", seed=None)
    assert np.array_equal(centre, model.bits_per_dim(x, dequantization="centre"))
    fresh = model.bits_per_dim(x, seed=None)
    assert not np.array_equal(fresh, reference)
    assert model.bits_per_dim(np.zeros((0, 1, 28, 28), np.uint8)).shape == (0,)


def test_vector_bits_per_dim_equal_the_cli_score(vector_run, tmp_path):
    model = realnvp.load(vector_run)
    assert (model.kind, model.shape, model.dims, model.classes, model.levels) == (
        "vector", (2,), 2, 0, None)
    rng = np.random.default_rng(3)
    points = rng.normal(size=(50, 2)).astype(np.float32)
    csv = tmp_path / "points.csv"
    csv.write_text("x,y\n" + "".join(f"{a!r},{b!r}\n" for a, b in points.tolist()))
    cli = np.array([r["bits_per_dim"] for r in score_json(vector_run, str(csv))])
    bpd = model.bits_per_dim(points)
    assert np.max(np.abs(bpd - cli)) <= 1e-6
    np.testing.assert_allclose(model.log_prob(points), -bpd * 2 * np.log(2), rtol=1e-5)
    assert np.array_equal(model.bits_per_dim(points.astype(np.float64)), bpd)


# --- Latents ---------------------------------------------------------------------------


def test_decode_of_encode_gives_the_images_back_bit_for_bit(image_run, fashion_test):
    images, _ = fashion_test
    x = images[:300]
    model = realnvp.load(image_run)
    z = model.encode(x)
    assert [s.shape[1:] for s in z] == model.latent_shapes
    assert all(s.dtype == np.float32 and s.shape[0] == 300 for s in z)
    back = model.decode(z)
    assert back.dtype == np.uint8
    assert np.array_equal(back, x)
    flat = model.encode(x, flat=True)
    assert flat.shape == (300, 784)
    assert np.array_equal(flat[:, : 2 * 14 * 14], z[0].reshape(300, -1))
    assert np.array_equal(model.decode(flat, batch_size=13), x)
    nhwc = np.ascontiguousarray(x.transpose(0, 2, 3, 1))
    z_last = model.encode(nhwc, channels_last=True)
    assert np.array_equal(model.decode(z_last, channels_last=True), nhwc)


def test_decode_of_encode_is_exact_for_17_level_digits(digits_run):
    model = realnvp.load(digits_run)
    assert model.levels == 17 and model.shape == (1, 8, 8)
    x = np.random.default_rng(0).integers(0, 17, size=(40, 1, 8, 8), dtype=np.uint8)
    assert np.array_equal(model.decode(model.encode(x)), x)
    samples = model.sample(16, seed=0)
    assert samples.max() <= 16


def test_vector_latents_invert(vector_run):
    model = realnvp.load(vector_run)
    v = np.random.default_rng(1).normal(size=(64, 2)).astype(np.float32)
    z = model.encode(v)
    assert z.shape == (64, 2) and z.dtype == np.float32
    np.testing.assert_allclose(model.decode(z), v, atol=1e-4)


# --- Samples ---------------------------------------------------------------------------


def test_samples_are_seeded_and_temperature_zero_is_the_mode(image_run):
    model = realnvp.load(image_run)
    a = model.sample(10, seed=5)
    assert a.dtype == np.uint8 and a.shape == (10, 1, 28, 28)
    assert np.array_equal(a, model.sample(10, seed=5, batch_size=3))
    assert not np.array_equal(a, model.sample(10, seed=6))
    assert model.sample(3, seed=5, channels_last=True).shape == (3, 28, 28, 1)
    mode = model.sample(4, temperature=0.0, seed=1)
    assert np.array_equal(mode, model.sample(4, temperature=0.0, seed=2))
    zeros = [np.zeros((1, *s), np.float32) for s in model.latent_shapes]
    assert np.array_equal(mode[:1], model.decode(zeros))
    assert model.sample(0).shape == (0, 1, 28, 28)


def test_vector_samples_are_seeded(vector_run):
    model = realnvp.load(vector_run)
    a = model.sample(100, seed=2)
    assert a.dtype == np.float32 and a.shape == (100, 2)
    assert np.array_equal(a, model.sample(100, 1.0, 2))
    mode = model.sample(5, temperature=0)
    np.testing.assert_allclose(mode, model.decode(np.zeros((5, 2), np.float32)), atol=1e-6)


# --- Class-conditional models ----------------------------------------------------------


def test_class_conditional_scores_posteriors_and_samples(conditional_run, fashion_test):
    images, labels = fashion_test
    x, y = images[:40], labels[:40]
    model = realnvp.load(conditional_run)
    assert model.classes == 10
    posterior = model.classify(x)
    assert posterior.shape == (40, 10) and posterior.dtype == np.float64
    np.testing.assert_allclose(np.logaddexp.reduce(posterior, axis=1), 0.0, atol=1e-9)
    given = np.stack([model.log_prob(x, np.full(40, k)) for k in range(10)], axis=1)
    marginal = model.log_prob(x)
    np.testing.assert_allclose(
        marginal, np.logaddexp.reduce(given, axis=1) - np.log(10), rtol=1e-5)
    np.testing.assert_allclose(
        posterior, given - np.logaddexp.reduce(given, axis=1, keepdims=True), atol=1e-3)
    bits = model.bits_per_dim(x, y)
    np.testing.assert_allclose(bits, -given[np.arange(40), y] / (784 * np.log(2)), rtol=1e-5)
    mode = model.sample(3, temperature=0, label=4)
    assert np.array_equal(mode[0], mode[1]) and np.array_equal(mode[1], mode[2])
    assert not np.array_equal(mode[0], model.sample(1, temperature=0, label=5)[0])
    mixture = model.sample(8, temperature=0, seed=3)
    assert len({m.tobytes() for m in mixture}) > 1, "without a label, classes are drawn"
    empty = np.zeros((0, 1, 28, 28), np.uint8)
    assert model.sample(0).shape == (0, 1, 28, 28)
    assert model.classify(empty).shape == (0, 10)
    assert [z.shape[0] for z in model.encode(empty)] == [0, 0, 0]
    assert model.decode(model.encode(empty)).shape == (0, 1, 28, 28)


# --- Bad input -------------------------------------------------------------------------


def test_missing_or_corrupt_exports_name_the_file(tmp_path, image_run):
    with pytest.raises(FileNotFoundError, match="nowhere"):
        realnvp.load(tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError, match="no trained model here"):
        realnvp.load(tmp_path)
    copy = tmp_path / "copy"
    shutil.copytree(image_run / "export", copy, ignore=shutil.ignore_patterns("best"))
    with pytest.raises(FileNotFoundError, match="no best export"):
        realnvp.load(copy, best=True)
    (copy / "model.safetensors").write_bytes(b"not safetensors at all")
    with pytest.raises(ValueError, match="model.safetensors"):
        realnvp.load(copy)
    shutil.copy(image_run / "export" / "model.safetensors", copy / "model.safetensors")
    weights = (copy / "model.safetensors").read_bytes()
    (copy / "model.safetensors").write_bytes(weights[: len(weights) // 2])
    with pytest.raises(ValueError, match="model.safetensors"):
        realnvp.load(copy)
    shutil.copy(image_run / "export" / "model.safetensors", copy / "model.safetensors")
    (copy / "model.toml").write_text("kind = 'image'\nscales = 'many'\n")
    with pytest.raises(ValueError, match="model.toml"):
        realnvp.load(copy)
    (copy / "model.toml").unlink()
    with pytest.raises(FileNotFoundError, match="model.toml"):
        realnvp.load(copy)


def test_bad_images_raise_value_errors_naming_what_was_expected(image_run, digits_run):
    model = realnvp.load(image_run)
    x = np.zeros((2, 1, 28, 28), np.uint8)
    with pytest.raises(ValueError, match=re.escape("[N, 1, 28, 28]")):
        model.bits_per_dim(x[0])
    with pytest.raises(ValueError, match=re.escape("got shape (2, 1, 32, 32)")):
        model.bits_per_dim(np.zeros((2, 1, 32, 32), np.uint8))
    with pytest.raises(ValueError, match=re.escape("[N, 28, 28, 1] (channels last)")):
        model.bits_per_dim(x, channels_last=True)
    with pytest.raises(ValueError, match="uint8.*float32"):
        model.bits_per_dim(x.astype(np.float32))
    with pytest.raises(ValueError, match=re.escape("300 is outside 0..=255")):
        model.bits_per_dim(np.full((1, 1, 28, 28), 300))
    with pytest.raises(ValueError, match=re.escape("-1 is outside 0..=255")):
        model.encode(np.full((1, 1, 28, 28), -1))
    digits = realnvp.load(digits_run)
    with pytest.raises(ValueError, match=re.escape("level 17 in image 1 is outside 0..=16")):
        digits.bits_per_dim(np.stack([np.zeros((1, 8, 8)), np.full((1, 8, 8), 17)]).astype(np.uint8))
    with pytest.raises(ValueError, match="dequantization.*uniform.*centre"):
        model.bits_per_dim(x, dequantization="gaussian")
    with pytest.raises(ValueError, match="batch_size"):
        model.bits_per_dim(x, batch_size=0)
    with pytest.raises(ValueError, match="temperature"):
        model.sample(2, temperature=-1.0)
    with pytest.raises(ValueError, match="n: expected a number of samples at least 0, got -1"):
        model.sample(-1)
    with pytest.raises(ValueError, match="draw them in several calls"):
        model.sample(10**12)
    with pytest.raises(ValueError, match="seed: expected an integer"):
        model.sample(1, seed=-5)
    with pytest.raises(ValueError, match="seed: expected an integer"):
        model.bits_per_dim(x, seed=2**64)
    with pytest.raises(ValueError, match="batch_size: expected at least 1 example per batch, got -3"):
        model.encode(x, batch_size=-3)
    with pytest.raises(ValueError, match="one per scale"):
        model.decode([np.zeros((1, 2, 14, 14), np.float32)])
    with pytest.raises(ValueError, match=re.escape("[N, 784]")):
        model.decode(np.zeros((1, 100), np.float32))
    with pytest.raises(ValueError, match="finite"):
        model.decode(np.full((1, 784), np.nan, np.float32))


def test_bad_labels_raise_value_errors(image_run, conditional_run):
    x = np.zeros((2, 1, 28, 28), np.uint8)
    unconditional = realnvp.load(image_run)
    with pytest.raises(ValueError, match="not class-conditional"):
        unconditional.bits_per_dim(x, [0, 1])
    with pytest.raises(ValueError, match="not class-conditional"):
        unconditional.classify(x)
    with pytest.raises(ValueError, match="not class-conditional"):
        unconditional.sample(2, label=1)
    model = realnvp.load(conditional_run)
    with pytest.raises(ValueError, match=re.escape("label 10 of example 1 is outside 0..=9")):
        model.log_prob(x, [0, 10])
    with pytest.raises(ValueError, match=re.escape("shape (2,)")):
        model.log_prob(x, [0, 1, 2])
    with pytest.raises(ValueError, match="integer class labels"):
        model.log_prob(x, [0.5, 1.0])
    with pytest.raises(ValueError, match=re.escape("label: -1 is outside 0..=9")):
        model.sample(1, label=-1)


def test_bad_vectors_raise_value_errors(vector_run):
    model = realnvp.load(vector_run)
    with pytest.raises(ValueError, match=re.escape("[N, 2]")):
        model.log_prob(np.zeros((4, 3), np.float32))
    with pytest.raises(ValueError, match="row 1 holds NaN"):
        model.log_prob(np.array([[0, 0], [np.nan, 0]], np.float32))
    with pytest.raises(ValueError, match="float32.*<U"):
        model.log_prob([["a", "b"]])
    with pytest.raises(ValueError, match="not class-conditional"):
        model.log_prob(np.zeros((1, 2)), [0])
    with pytest.raises(ValueError, match="needs an image model"):
        model.classify(np.zeros((1, 2)))


# --- Threads and speed -----------------------------------------------------------------


def test_computation_releases_the_gil(image_run, fashion_test):
    """While another thread scores for seconds, this one never waits long for the GIL."""
    images, _ = fashion_test
    model = realnvp.load(image_run)
    worker = threading.Thread(target=model.bits_per_dim, args=(images[:5000],))
    start = last = time.perf_counter()
    longest = 0.0
    worker.start()
    while worker.is_alive():
        now = time.perf_counter()
        longest, last = max(longest, now - last), now
    took = time.perf_counter() - start
    worker.join()
    assert took > 1.0, f"scoring took {took:.2f} s: too short to tell"
    assert longest < 0.25, f"the main thread stood still for {longest:.2f} s of {took:.2f} s"


def test_speed_on_the_fashion_mnist_test_set_matches_the_cli(image_run, capsys):
    """Bits/dim of the 10,000 test images: Python (reading the IDX file, loading the
    model, scoring) against `realnvp eval` (the same work in one process), the fastest of
    5 alternating rounds each: the machine's noise only ever adds time (`speed.py` runs the
    same comparison on any run)."""
    times = compare(image_run, 5, realnvp_bin())
    with capsys.disabled():
        print("\n" + summary(times))
    assert min(times["python"]) <= 1.10 * min(times["eval"])

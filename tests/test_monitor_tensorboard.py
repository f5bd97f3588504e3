"""TensorBoard output of TimescaleMonitor and AlignmentMonitor, read back from the files."""

import glob
import os
import sys

import keras
import numpy as np
import pytest

from keras_classpca.diagnostics import AlignmentMonitor, TimescaleMonitor

tf = pytest.importorskip("tensorflow")


def read_scalars(run_dir):
    """{tag: [(step, value), ...]} from every event file of a TensorBoard run directory."""
    scalars = {}
    for path in sorted(glob.glob(os.path.join(run_dir, "events.out.tfevents.*"))):
        for event in tf.compat.v1.train.summary_iterator(path):
            for value in event.summary.value:
                if value.HasField("tensor"):
                    number = float(tf.make_ndarray(value.tensor))
                else:
                    number = float(value.simple_value)
                scalars.setdefault(value.tag, []).append((int(event.step), number))
    return scalars


def assert_written(written, tag, steps, values):
    """The event file holds exactly `values` at `steps` (float32, as tf.summary stores)."""
    assert [step for step, _ in written[tag]] == list(steps), tag
    np.testing.assert_allclose(
        [value for _, value in written[tag]], np.asarray(values, dtype=np.float32), rtol=1e-6
    )


def test_alignment_monitor_writes_its_records_next_to_keras_tensorboard(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(64, 5)).astype("float32")
    y = (x[:, 0] > 0).astype("float32")[:, None]
    model = keras.Sequential(
        [
            keras.Input((5,)),
            keras.layers.Dense(4, use_bias=False, name="a"),
            keras.layers.Dense(3, use_bias=False, name="b"),
            keras.layers.Dense(1, use_bias=False, name="c"),
        ]
    )
    model.compile(keras.optimizers.SGD(0.1), keras.losses.BinaryCrossentropy(from_logits=True))
    monitor = AlignmentMonitor(log_dir=tmp_path)
    board = keras.callbacks.TensorBoard(tmp_path, write_graph=False)
    model.fit(x, y, epochs=3, batch_size=64, verbose=0, callbacks=[board, monitor])

    written = read_scalars(tmp_path / "train")
    expected = {f"alignment/ratio/{name}" for name in "abc"}
    expected |= {"alignment/alignment/a->b", "alignment/alignment/b->c"}
    assert expected <= set(written)
    assert monitor.epochs == [-1, 0, 1, 2]
    for name, values in monitor.ratios.items():
        assert_written(written, f"alignment/ratio/{name}", monitor.epochs, values)
    for pair, values in monitor.alignments.items():
        assert_written(written, f"alignment/alignment/{pair}", monitor.epochs, values)
    # the values moved during training, so a stale or constant write would fail
    assert len(set(monitor.ratios["a"])) > 1
    # Keras' own epoch scalars sit in the same run at the same steps
    loss_tag = next(tag for tag in written if tag.startswith("epoch_loss"))
    assert [step for step, _ in written[loss_tag]] == monitor.epochs[1:]


def test_timescale_monitor_writes_its_history(tmp_path):
    rng = np.random.default_rng(1)
    y = np.arange(240) % 3
    x = (rng.normal(size=(240, 10)) + 2.0 * np.eye(3, 10)[y]).astype("float32")
    model = keras.Sequential(
        [
            keras.Input((10,)),
            keras.layers.Dense(6, activation="relu", name="hidden"),
            keras.layers.Dense(3, activation="softmax", name="out"),
        ]
    )
    model.compile("adam", "sparse_categorical_crossentropy")
    monitor = TimescaleMonitor((x, y), samples=120, noise_ceiling=True, log_dir=tmp_path)
    model.fit(x, y, epochs=3, batch_size=32, verbose=0, callbacks=[monitor])

    written = read_scalars(os.path.join(tmp_path, "train"))
    epochs = monitor.history["epochs"]
    assert epochs == [0, 1, 2, 3]
    steps = [epoch - 1 for epoch in epochs]  # Keras' epoch index; -1 before training
    for name, entry in monitor.history["layers"].items():
        assert_written(written, f"timescale/overlap/{name}", steps, entry["overlap"])
        assert_written(written, f"timescale/noise_ceiling/{name}", steps, entry["noise_ceiling"])
        assert_written(
            written, f"timescale/chance_overlap/{name}", steps, [entry["chance_overlap"]] * 4
        )
        # no weight change before training: nothing is written at step -1
        assert entry["weight_change"][0] is None
        for key in ("weight_change", "subspace_change"):
            assert_written(written, f"timescale/{key}/{name}", steps[1:], entry[key][1:])
    assert len(written) == 5 * len(monitor.history["layers"])


def test_tensorboard_without_tensorflow_names_the_extra(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "tensorflow", None)  # `import tensorflow` fails
    x, y = np.zeros((10, 3)), np.arange(10) % 2
    with pytest.raises(ImportError, match=r"keras-classpca\[tensorflow\]"):
        AlignmentMonitor(log_dir=tmp_path)
    with pytest.raises(ImportError, match=r"keras-classpca\[tensorflow\]"):
        TimescaleMonitor((x, y), log_dir=tmp_path)
    # without a log_dir nothing needs TensorFlow
    AlignmentMonitor()
    TimescaleMonitor((x, y))

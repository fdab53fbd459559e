"""The compile probe times eager and compiled steps of a real model and decides from its own numbers."""
from __future__ import annotations

import pytest

from hf_animals import compile_probe


def test_probe_times_eager_and_compiled_steps_and_decides_from_them():
    # aot_eager: the same torch.compile path (Dynamo capture, AOT autograd) without building C++ kernels, so the test
    # needs no compiler and stays short; the real measurement uses Inductor.
    r = compile_probe.probe_family("scratch", image_size=32, steps=1, batch_size=4, train_images=64, epochs=1,
                                   backend="aot_eager")
    assert r.model == "animals_cnn5" and r.eager_step_s > 0 and r.compiled_step_s > 0 and r.compile_s >= 0
    assert r.run_steps == 16  # 64 images at batch 4, one epoch
    assert r.run_saving_s == pytest.approx(16 * (r.eager_step_s - r.compiled_step_s) - r.compile_s)
    assert r.pays == (r.run_saving_s > 0)
    assert "animals_cnn5" in compile_probe.format_table([r])

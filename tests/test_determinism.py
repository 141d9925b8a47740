"""``train.deterministic``: deterministic kernels while a run lasts, the previous settings after."""

from __future__ import annotations

import pytest
import torch

from sam_l1dfl.training.runtime import deterministic_kernels


def test_deterministic_kernels_switch_on_and_restore():
    before = (torch.are_deterministic_algorithms_enabled(), torch.backends.cudnn.deterministic,
              torch.backends.cudnn.benchmark)
    with deterministic_kernels(True):
        assert torch.are_deterministic_algorithms_enabled() and torch.is_deterministic_algorithms_warn_only_enabled()
        assert torch.backends.cudnn.deterministic and not torch.backends.cudnn.benchmark
    assert (torch.are_deterministic_algorithms_enabled(), torch.backends.cudnn.deterministic,
            torch.backends.cudnn.benchmark) == before
    with pytest.raises(RuntimeError, match="inside"):
        with deterministic_kernels(True):
            raise RuntimeError("inside")
    assert torch.are_deterministic_algorithms_enabled() == before[0]  # restored after an error too
    with deterministic_kernels(False):
        assert torch.are_deterministic_algorithms_enabled() == before[0]


def test_both_trainers_take_the_key():
    from sam_l1dfl.cnn.config import load_cnn_config
    from sam_l1dfl.training import load_config

    assert load_config(None, ["train.deterministic=true"]).train.deterministic
    assert load_cnn_config(None, ["train.deterministic=true"]).train.deterministic
    assert not load_config(None, []).train.deterministic

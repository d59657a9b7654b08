"""Output shapes of both model families."""
from __future__ import annotations

import pytest
import torch

from captcha_recognize.model import CNNModel, CRNN, ModelConfig, build_model


def test_cnn_classic_shape_for_50x22():
    m = CNNModel(ModelConfig())
    assert m.flat_features == 768
    convs = [x for x in m.features if isinstance(x, torch.nn.Conv2d)]
    pools = [x for x in m.features if isinstance(x, torch.nn.MaxPool2d)]
    assert [c.out_channels for c in convs] == [16, 16, 32, 32, 64, 64, 256, 256]
    assert len(pools) == 4 and len(m.heads) == 4
    lin = [x for x in m.heads[0] if isinstance(x, torch.nn.Linear)]
    assert (lin[0].in_features, lin[0].out_features, lin[1].out_features) == (768, 100, 10)
    assert m(torch.randn(2, 3, 22, 50)).shape == (2, 4, 10)


def test_cnn_heads_and_classes_follow_config():
    m = build_model(ModelConfig(n_classes=19, n_positions=5, in_channels=1, img_h=32, img_w=128))
    assert m(torch.randn(3, 1, 32, 128)).shape == (3, 5, 19)


def test_crnn_outputs_a_column_sequence_with_blank():
    m = build_model(ModelConfig(arch="crnn", n_classes=19, in_channels=1, img_h=32, img_w=128))
    assert isinstance(m, CRNN)
    assert m(torch.randn(2, 1, 32, 128)).shape == (2, 32, 20)  # T = W / 4, K + 1


def test_too_small_input_and_unknown_arch_are_errors():
    with pytest.raises(ValueError):
        build_model(ModelConfig(img_h=8, img_w=8))
    with pytest.raises(ValueError):
        build_model(ModelConfig(arch="transformer"))


def test_crnn_starts_on_blank_with_the_gru_as_a_no_op():
    torch.manual_seed(0)
    m = build_model(ModelConfig(arch="crnn", n_classes=10, in_channels=1, img_h=24, img_w=64)).eval()
    x = torch.randn(2, 1, 24, 64)
    fresh = m(x)  # (B, T, K + 1)
    assert (fresh.argmax(-1) == 0).all()  # every column starts on the blank
    with torch.no_grad():
        for p in m.rnn.parameters():
            p.normal_()
    assert torch.equal(m(x), fresh)  # the zero-initialised output layer: the GRU adds nothing yet
    with torch.no_grad():
        m.rnn_out.weight.normal_()
    assert not torch.allclose(m(x), fresh)  # once trained, it contributes

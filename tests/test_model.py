import mindspore as ms
import numpy as np
import pytest

from ds2_helpers.config import ModelConfig, model_preset
from ds2_helpers.model import DeepSpeech2, count_parameters, output_lengths, rnn_input_size

ms.set_context(mode=ms.PYNATIVE_MODE)
SMALL = ModelConfig(conv_channels=4, hidden_size=16, hidden_layers=2)


def test_paper_preset_has_86_6_million_parameters():
    net = DeepSpeech2(model_preset("paper"))
    assert count_parameters(net) == 86_608_096
    assert rnn_input_size(model_preset("paper")) == 32 * 41
    names = {p.name for p in net.get_parameters()}
    assert {"conv.conv1.weight", "conv.bn2.moving_mean", "RNN.lstms.4.weight_hh_l0_reverse", "fc.module.weight"} <= names
    assert net.get_parameters().__next__().shape == (32, 1, 41, 11)


@pytest.mark.parametrize("frames", [11, 100, 101, 1250])
def test_output_lengths_follow_the_convolutions(frames):
    net = DeepSpeech2(SMALL)
    net.set_train(False)
    x = ms.Tensor(np.random.default_rng(0).standard_normal((1, 1, 161, frames)).astype(np.float32))
    logits, out_len = net(x, ms.Tensor(np.array([frames], np.int32)))
    assert logits.shape == (output_lengths(frames), 1, 29)
    assert int(out_len.asnumpy()[0]) == output_lengths(frames) == (frames - 1) // 2 + 1


def test_matmul_convolution_equals_conv2d():
    a, b = DeepSpeech2(SMALL, conv_impl="matmul"), DeepSpeech2(SMALL, conv_impl="native")
    ms.load_param_into_net(b, {p.name: ms.Parameter(p.value(), name=p.name) for p in a.get_parameters()})
    for net in (a, b):
        net.set_train(False)
    x = ms.Tensor(np.random.default_rng(1).standard_normal((2, 1, 161, 57)).astype(np.float32))
    lengths = ms.Tensor(np.array([57, 40], np.int32))
    np.testing.assert_allclose(a(x, lengths)[0].asnumpy(), b(x, lengths)[0].asnumpy(), atol=1e-5)


def test_padding_never_changes_an_utterance():
    from ds2_helpers.train import CTCLossNet

    net = DeepSpeech2(SMALL)
    net.set_train(False)
    rng = np.random.default_rng(2)
    lengths = [90, 61, 33]
    feats = [rng.standard_normal((161, n)).astype(np.float32) for n in lengths]
    labels = [rng.integers(0, 28, size=k).astype(np.int32) for k in (9, 5, 3)]
    x = rng.standard_normal((3, 1, 161, 128)).astype(np.float32) * 5  # junk in the padding on purpose
    y = np.full((3, 12), 28, np.int32)
    for k, (f, l) in enumerate(zip(feats, labels)):
        x[k, 0, :, : f.shape[1]] = f
        y[k, : len(l)] = l
    loss_net = CTCLossNet(net)
    logits, out_len = net(ms.Tensor(x), ms.Tensor(np.array(lengths, np.int32)))
    batch = loss_net.per_utterance(logits, out_len, ms.Tensor(y), ms.Tensor(np.array([9, 5, 3], np.int32))).asnumpy()
    for k, (f, l) in enumerate(zip(feats, labels)):
        lg, ol = net(ms.Tensor(f[None, None]), ms.Tensor(np.array([f.shape[1]], np.int32)))
        single = loss_net.per_utterance(lg, ol, ms.Tensor(l[None]), ms.Tensor(np.array([len(l)], np.int32)))
        np.testing.assert_allclose(batch[k], single.asnumpy()[0], rtol=1e-5)
        np.testing.assert_allclose(logits.asnumpy()[: int(ol.asnumpy()[0]), k], lg.asnumpy()[:, 0], atol=1e-5)


def test_gru_variant_builds_and_runs():
    net = DeepSpeech2(ModelConfig(conv_channels=2, hidden_size=8, hidden_layers=1, rnn_type="GRU"))
    net.set_train(False)
    logits, _ = net(ms.Tensor(np.zeros((1, 1, 161, 20), np.float32)), ms.Tensor(np.array([20], np.int32)))
    assert logits.shape == (10, 1, 29)

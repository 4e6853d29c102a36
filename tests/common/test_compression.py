import numpy as np
import pytest

from fedvault.common.compression import SCALE_SUFFIX, dequantize, quantize


def _pair(seed=0):
    rng = np.random.default_rng(seed)
    ref = {
        "w": rng.normal(size=(8, 5)).astype(np.float32),
        "b": rng.normal(size=5).astype(np.float32),
    }
    local = {
        k: v + rng.normal(scale=0.1, size=v.shape).astype(np.float32)
        for k, v in ref.items()
    }
    return ref, local


def test_codes_are_int8_with_one_scale_per_tensor_and_close():
    ref, local = _pair()
    sent = quantize(local, ref, np.random.default_rng(1))
    assert sent["w"].dtype == np.int8 and sent["w" + SCALE_SUFFIX].shape == (1,)
    back = dequantize(sent, ref)
    assert back is not None
    for k in ref:
        scale = float(sent[k + SCALE_SUFFIX][0])
        assert np.max(np.abs(back[k] - local[k])) <= scale * (1 + 1e-5)
        assert back[k].dtype == np.float32


def test_stochastic_rounding_is_unbiased():
    ref, local = _pair(3)
    rng = np.random.default_rng(7)
    mean = np.mean(
        [dequantize(quantize(local, ref, rng), ref)["w"] for _ in range(400)], axis=0
    )
    scale = float(quantize(local, ref, rng)["w" + SCALE_SUFFIX][0])
    # each draw is within one step of the truth; the mean of 400 within ~4 sd
    assert np.max(np.abs(mean - local["w"])) < 4 * scale / np.sqrt(400) + 1e-6


def test_an_unchanged_model_and_malformed_updates():
    ref, _ = _pair()
    sent = quantize(ref, ref, np.random.default_rng(0))
    assert all(not np.any(sent[k]) for k in ref)
    assert np.allclose(dequantize(sent, ref)["w"], ref["w"])
    assert dequantize({"w": sent["w"]}, ref) is None  # missing tensors and scales
    bad = dict(sent, w=sent["w"].astype(np.float32))
    assert dequantize(bad, ref) is None  # not int8
    wrong = dict(sent, b=np.zeros(6, dtype=np.int8))
    assert dequantize(wrong, ref) is None  # wrong shape


@pytest.mark.parametrize("combo", [{"secagg": True}, {"client_dp": "client-fixed"}])
def test_int8_refuses_transforms_of_its_own(combo):
    from fedvault.common.config import TrainingConfig
    from fedvault.common.errors import ConfigError

    with pytest.raises(ConfigError, match="compress"):
        TrainingConfig(compress="int8", **combo)


def test_packed_update_is_one_buffer_and_unpacks_exactly():
    from fedvault.common.compression import pack, unpack

    ref, local = _pair(5)
    sent = quantize(local, ref, np.random.default_rng(2))
    data = pack(sent)
    assert len(data) == 4 * len(ref) + sum(v.size for v in ref.values())
    back = unpack(data, ref)
    assert back is not None and set(back) == set(sent)
    for key, value in sent.items():
        assert np.array_equal(back[key], value) and back[key].dtype == value.dtype


def test_malformed_packed_updates_are_refused():
    from fedvault.common.compression import pack, unpack

    ref, local = _pair(6)
    data = pack(quantize(local, ref, np.random.default_rng(2)))
    assert unpack(data[:-1], ref) is None  # a code missing
    assert unpack(data + b"\0", ref) is None  # one too many
    for scale in (np.nan, np.inf, 0.0, -1.0):  # scales come first, sorted keys
        bad = np.array([scale], dtype="<f4").tobytes() + data[4:]
        assert unpack(bad, ref) is None

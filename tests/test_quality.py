"""The quality gate's reference check and its Base-model voice (the gate itself: test_convert.py)."""

import mlx.core as mx
import numpy as np
import pytest

from mlx_qwen_tts.loading import load_model
from mlx_qwen_tts.quality import check_reference, fingerprint, gate_voice
from mlx_qwen_tts_convert import convert_model


@pytest.fixture(scope="module")
def pair(model_dir, tmp_path_factory):
    src = model_dir("customvoice_0b6")
    q4 = convert_model(src, tmp_path_factory.mktemp("q") / "q4", bits=4, group_size=32, dtype="float32")
    return load_model(src, dtype=mx.float32, codec=False), load_model(q4, dtype=mx.float32, codec=False)


def test_a_quantized_weight_counts_as_the_matrix_it_packs(pair):
    ref, q4 = pair
    a, b = fingerprint(ref)["shapes"], fingerprint(q4)["shapes"]
    assert a == b
    packed = q4.talker.layers[0].mlp.down_proj
    assert packed.weight.shape != ref.talker.layers[0].mlp.down_proj.weight.shape  # really packed
    check_reference(*pair)


def test_a_tensor_of_another_shape_is_named(pair):
    ref, q4 = pair
    layer = ref.talker.layers[0].self_attn.q_norm
    saved = layer.weight
    layer.weight = mx.zeros((saved.shape[0] * 2,))
    try:
        with pytest.raises(ValueError, match=r"tensor talker\.layers\.0\.self_attn\.q_norm\.weight has shape"):
            check_reference(ref, q4)
    finally:
        layer.weight = saved


def test_base_gate_voice_is_a_real_xvector(model_dir):
    model = load_model(model_dir("base_0b6"), dtype=mx.float32, codec=False)
    a, b = gate_voice(model), gate_voice(model)
    xv = np.array(a.xvector)
    assert xv.shape == (model.config.speaker_encoder.enc_dim,) and np.isfinite(xv).all() and np.abs(xv).max() > 0
    np.testing.assert_array_equal(xv, np.array(b.xvector))  # deterministic: both models get the same voice
    assert a.ref_codes is None

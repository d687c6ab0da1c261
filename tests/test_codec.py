"""Speech-tokenizer decoder: parity with the official decode() and one causal pass, streaming equal
to one pass, input validation, and strict weight conversion."""

import json

import mlx.core as mx
import numpy as np
import pytest

from mlx_qwen_tts.models.codec import convert_decoder_weights, decode, load_codec_decoder
from mlx_qwen_tts.config import parse_speech_tokenizer_config

SAMPLES_PER_FRAME = 1920


@pytest.fixture(scope="module")
def tokenizer_dir(model_dir):
    return model_dir("customvoice_0b6") / "speech_tokenizer"


@pytest.fixture(scope="module")
def config(tokenizer_dir):
    cfg = json.loads((tokenizer_dir / "config.json").read_text())
    return parse_speech_tokenizer_config(cfg, str(tokenizer_dir / "config.json")).decoder


@pytest.fixture(scope="module", params=[False, True], ids=["matmul-conv", "native-conv"])
def decoder(tokenizer_dir, config, request):
    """Both convolution paths: matmuls (the CPU default) and mx.conv1d (the GPU default), so
    nothing a Mac executes is first executed by a user."""
    return load_codec_decoder(tokenizer_dir, config, native_conv=request.param)


@pytest.fixture(scope="module")
def dumps(fixtures_dir):
    return {n: dict(np.load(fixtures_dir / "dumps" / "codec" / f"decode_{n}.npz")) for n in (1, 5, 17, 340)}


@pytest.mark.parametrize("frames", [1, 5, 17, 340])
def test_decode_matches_official(decoder, dumps, frames):
    ref = dumps[frames]
    wav = np.array(decode(decoder, ref["codes"]))
    assert wav.shape == ref["wav"].shape == (frames * SAMPLES_PER_FRAME,)
    assert np.abs(wav - ref["wav"]).max() <= 1e-4
    assert np.abs(wav).max() <= 1.0


def test_one_pass_matches_official(decoder, dumps):
    # 340 frames: beyond the 300-frame chunks of decode() and the 72-frame attention window.
    ref = dumps[340]
    wav, state = decoder(mx.array(ref["codes"])[None])
    assert wav.shape == (1, 340 * SAMPLES_PER_FRAME)
    assert np.abs(np.array(wav[0]) - ref["wav_one_pass"]).max() <= 1e-4
    assert state.offset == 340
    # The chunked official decode really differs from one pass here, so both paths are exercised.
    assert np.abs(ref["wav"] - ref["wav_one_pass"]).max() > 1e-3


def test_batch_rows_are_independent(decoder, dumps):
    ref = dumps[17]
    other = np.random.default_rng(3).integers(0, 2048, ref["codes"].shape)
    wav = np.array(decode(decoder, np.stack([other, ref["codes"]])))
    assert wav.shape == (2, 17 * SAMPLES_PER_FRAME)
    assert np.abs(wav[1] - ref["wav"]).max() <= 1e-4


@pytest.fixture(scope="module")
def stream_codes():
    return mx.array(np.random.default_rng(0).integers(0, 2048, (1, 104, 16)))


@pytest.fixture(scope="module")
def one_pass(decoder, stream_codes):
    wav, _ = decoder(stream_codes)
    return np.array(wav)


@pytest.mark.parametrize("chunks", [[1], [2], [3], [7], [25], [1, 2, 3, 1, 7, 4, 30, 2, 9]],
                         ids=["1", "2", "3", "7", "25", "irregular"])
def test_streaming_equals_one_pass(decoder, stream_codes, one_pass, chunks):
    state, pieces, start, i = decoder.make_state(1), [], 0, 0
    total = stream_codes.shape[1]
    while start < total:
        n = chunks[i % len(chunks)]
        wav, state = decoder(stream_codes[:, start : start + n], state)
        mx.eval(wav, state)
        assert wav.shape == (1, min(n, total - start) * SAMPLES_PER_FRAME)
        pieces.append(np.array(wav))
        start, i = start + n, i + 1
    streamed = np.concatenate(pieces, axis=1)
    assert streamed.shape == one_pass.shape
    assert np.abs(streamed - one_pass).max() <= 1e-5
    assert state.offset == total
    assert state.kv[0][0].shape[2] == 71  # only what the 72-frame window can still see


def test_small_first_chunk_keeps_small_state(decoder, stream_codes):
    _, state = decoder(stream_codes[:, :2])
    assert state.offset == 2
    assert all(k.shape[2] == 2 and v.shape[2] == 2 for k, v in state.kv)  # no padding to the window


@pytest.mark.parametrize("bad, message", [
    (np.full((1, 3, 16), 2048), r"\[0, 2048\)"),
    (np.full((1, 3, 16), -1), r"\[0, 2048\)"),
    (np.zeros((1, 3, 15), np.int64), r"\[batch, frames >= 1, 16\]"),
    (np.zeros((1, 0, 16), np.int64), r"\[batch, frames >= 1, 16\]"),
    (np.zeros((3, 16), np.float32), r"\[batch, frames >= 1, 16\]"),
    (np.zeros((1, 3, 16), np.float32), "integers"),
])
def test_invalid_codes_raise(decoder, bad, message):
    with pytest.raises(ValueError, match=message):
        decoder(mx.array(bad))


def test_decode_rejects_bad_codes(decoder):
    codes = np.zeros((4, 16), np.int64)
    codes[2, 5] = 2048
    with pytest.raises(ValueError, match="2048"):
        decode(decoder, codes)


@pytest.fixture(scope="module")
def raw_weights(tokenizer_dir):
    return mx.load(str(tokenizer_dir / "model.safetensors"))


def test_conversion_layouts(raw_weights):
    converted = convert_decoder_weights(raw_weights)
    assert not any(k.startswith(("encoder.", "decoder.quantizer")) for k in converted)
    assert not any("input_proj" in k and k.startswith("quantizer") for k in converted)
    conv = raw_weights["decoder.decoder.1.block.2.conv1.conv.weight"]  # Conv1d [out, in, k]
    assert np.array_equal(converted["decoder.1.block.2.conv1.weight"], conv.transpose(0, 2, 1))
    conv_t = raw_weights["decoder.decoder.1.block.1.conv.weight"]  # ConvTranspose1d [in, out, k]
    assert np.array_equal(converted["decoder.1.block.1.weight"], conv_t.transpose(1, 2, 0))
    depthwise = raw_weights["decoder.upsample.0.1.dwconv.conv.weight"]  # [C, 1, k]
    assert converted["upsample.0.1.dwconv.weight"].shape == (depthwise.shape[0], depthwise.shape[2], 1)
    usage = raw_weights["decoder.quantizer.rvq_rest.vq.layers.3._codebook.cluster_usage"]
    embedding_sum = raw_weights["decoder.quantizer.rvq_rest.vq.layers.3._codebook.embedding_sum"]
    assert converted["quantizer.rvq_rest.codebook"].shape == (15, 2048, embedding_sum.shape[1])
    assert np.allclose(converted["quantizer.rvq_rest.codebook"][3], embedding_sum / usage[:, None], rtol=1e-6)
    from_numpy = convert_decoder_weights({k: np.array(v) for k, v in raw_weights.items()})
    assert from_numpy.keys() == converted.keys()
    assert np.array_equal(from_numpy["decoder.1.block.1.weight"], converted["decoder.1.block.1.weight"])


def test_unknown_weight_raises(raw_weights):
    with pytest.raises(ValueError, match="decoder.pre_transformer.layers.0.self_attn.q_norm.weight"):
        convert_decoder_weights({**raw_weights, "decoder.pre_transformer.layers.0.self_attn.q_norm.weight":
                                 mx.zeros((8,))})
    with pytest.raises(ValueError, match="'talker.codec_head.weight'"):
        convert_decoder_weights({**raw_weights, "talker.codec_head.weight": mx.zeros((4, 4))})


def test_converted_weights_are_not_converted_again(raw_weights):
    with pytest.raises(ValueError, match="unknown speech-tokenizer weight"):
        convert_decoder_weights(convert_decoder_weights(raw_weights))


def test_missing_codebook_half_raises(raw_weights):
    key = "decoder.quantizer.rvq_rest.vq.layers.4._codebook.cluster_usage"
    with pytest.raises(ValueError, match=key.replace(".", r"\.")):
        convert_decoder_weights({k: v for k, v in raw_weights.items() if k != key})


def test_missing_weight_raises_on_load(raw_weights, config, tmp_path):
    path = tmp_path / "model.safetensors"
    mx.save_safetensors(str(path), {k: v for k, v in raw_weights.items()
                                    if k != "decoder.decoder.2.block.3.conv1.conv.bias"})
    with pytest.raises(ValueError, match=r"decoder\.2\.block\.3\.conv1\.bias"):
        load_codec_decoder(path, config)

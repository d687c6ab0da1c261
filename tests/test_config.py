"""The fixtures' configs read through mlx_qwen_tts.config, with the ids, shapes and layout that
the ports rely on; malformed configs give errors that name the field."""

import copy
import json

import numpy as np
import pytest
from safetensors.numpy import load_file

from conftest import VARIANTS, load_cases
from mlx_qwen_tts.config import ConfigError, load_model_config, parse_model_config

REAL_LANGUAGES = {"english": 2050, "german": 2053, "spanish": 2054, "chinese": 2055, "japanese": 2058,
                  "french": 2061, "korean": 2064, "russian": 2069, "italian": 2070, "portuguese": 2071}
REAL_SPEAKERS = {"vivian": 3065, "serena": 3066, "uncle_fu": 3010, "dylan": 2878, "eric": 2875,
                 "ryan": 3061, "aiden": 2861, "ono_anna": 2873, "sohee": 2864}


@pytest.mark.parametrize("variant", VARIANTS)
def test_fixture_config_has_real_id_space(model_dir, variant):
    cfg = load_model_config(model_dir(variant))
    ids = cfg.ids
    assert (ids.codec_pad, ids.codec_bos, ids.codec_eos) == (2148, 2149, 2150)
    assert (ids.codec_think, ids.codec_nothink, ids.codec_think_bos, ids.codec_think_eos) == (2154, 2155, 2156, 2157)
    assert (ids.tts_pad, ids.tts_bos, ids.tts_eos, ids.im_start, ids.im_end) == (151671, 151672, 151673, 151644, 151645)
    assert cfg.talker.vocab_size == 3072 and cfg.codebook_size == 2048 and cfg.num_code_groups == 16
    assert cfg.text_vocab_size == 151936
    for name, value in REAL_LANGUAGES.items():
        assert cfg.languages[name] == value
    dec = cfg.speech_tokenizer.decoder
    assert dec.samples_per_frame == 1920 and cfg.speech_tokenizer.sample_rate == 24000
    assert dec.sliding_window == 72 and dec.num_quantizers == 16 and dec.upsample_rates == (8, 5, 4, 3)
    assert cfg.generation.repetition_penalty == 1.05 and cfg.generation.top_k == 50
    assert cfg.talker.head_dim * cfg.talker.num_attention_heads != cfg.talker.hidden_size


def test_variant_specifics(model_dir):
    cv06 = load_model_config(model_dir("customvoice_0b6"))
    assert cv06.model_type == "custom_voice" and not cv06.honours_instruct
    assert cv06.speakers == REAL_SPEAKERS
    assert cv06.speaker_dialects["eric"] == "sichuan_dialect" and cv06.speaker_dialects["dylan"] == "beijing_dialect"
    assert cv06.languages["sichuan_dialect"] == 2062 and cv06.languages["beijing_dialect"] == 2074
    assert cv06.code_predictor.hidden_size == cv06.talker.hidden_size  # identity projection (0.6B)
    cv17 = load_model_config(model_dir("customvoice_1b7"))
    assert cv17.honours_instruct and cv17.code_predictor.hidden_size < cv17.talker.hidden_size
    vd = load_model_config(model_dir("voicedesign_1b7"))
    assert vd.model_type == "voice_design" and vd.speakers == {}
    base = load_model_config(model_dir("base_0b6"))
    assert base.model_type == "base" and base.speaker_encoder.enc_dim == base.talker.hidden_size
    assert cv06.speaker_encoder is None


@pytest.mark.parametrize("variant", VARIANTS)
def test_weight_layout_matches_config(model_dir, variant):
    folder = model_dir(variant)
    cfg = load_model_config(folder)
    w = load_file(str(folder / "model.safetensors"))
    H, T = cfg.talker.hidden_size, cfg.text_hidden_size
    assert w["talker.model.text_embedding.weight"].shape == (cfg.text_vocab_size, T)
    assert w["talker.model.codec_embedding.weight"].shape == (3072, H)
    assert w["talker.codec_head.weight"].shape == (3072, H)
    assert w["talker.text_projection.linear_fc2.weight"].shape == (H, T)
    assert w["talker.model.layers.0.self_attn.q_proj.weight"].shape == (
        cfg.talker.num_attention_heads * cfg.talker.head_dim, H)
    cp = cfg.code_predictor
    for g in range(15):
        assert w[f"talker.code_predictor.model.codec_embedding.{g}.weight"].shape == (2048, H)
        assert w[f"talker.code_predictor.lm_head.{g}.weight"].shape == (2048, cp.hidden_size)
    has_projection = "talker.code_predictor.small_to_mtp_projection.weight" in w
    assert has_projection == (cp.hidden_size != H)
    assert any(k.startswith("speaker_encoder.") for k in w) == (cfg.model_type == "base")
    st = load_file(str(folder / "speech_tokenizer" / "model.safetensors"))
    assert st["decoder.quantizer.rvq_rest.vq.layers.14._codebook.embedding_sum"].shape[0] == 2048
    assert (folder / "vocab.json").exists() and (folder / "merges.txt").exists()
    assert not (folder / "tokenizer.json").exists()  # as in the released repos


def test_reference_dumps_cover_required_cases(fixtures_dir):
    seen_eos = seen_max = False
    for variant in VARIANTS:
        cases = load_cases(fixtures_dir, variant)
        assert cases, variant
        for name, args, ref in cases:
            n = len(ref["codes"])
            assert ref["codes"].shape == (n, 16)
            assert ref["predictor_logits"].shape == (n, 15, 2048)
            assert len(ref["talker_logits"]) in (n, n + 1)
            assert ref["prefill"].ndim == 3 and ref["prefill"].dtype == np.float32
            seen_eos |= args["ended_with_eos"]
            seen_max |= not args["ended_with_eos"]
    assert seen_eos and seen_max  # both stopping paths are exercised
    voice = np.load(fixtures_dir / "dumps" / "base_0b6" / "voice.npz")
    assert voice["mel"].shape[1] == 128 and voice["ref_codes"].shape[1] == 16
    assert len(np.unique(voice["ref_codes"])) > 4  # encoder codebooks are not degenerate
    for frames in (1, 5, 17, 340):
        d = np.load(fixtures_dir / "dumps" / "codec" / f"decode_{frames}.npz")
        assert d["wav"].shape == (frames * 1920,)
        assert 0.005 < np.sqrt(np.mean(d["wav"] ** 2)) and np.abs(d["wav"]).max() < 0.999  # not silent, not clipped


def _raw_configs(folder):
    return (json.loads((folder / "config.json").read_text()),
            json.loads((folder / "speech_tokenizer" / "config.json").read_text()))


@pytest.mark.parametrize("mutate, message", [
    (lambda c, s: c["talker_config"].pop("hidden_size"), "'hidden_size' is missing"),
    (lambda c, s: c.pop("talker_config"), "'talker_config' is missing"),
    (lambda c, s: c.__setitem__("tts_model_type", "karaoke"), "tts_model_type"),
    (lambda c, s: c["talker_config"].__setitem__("codec_eos_token_id", 5), "codec_eos"),
    (lambda c, s: c["talker_config"]["spk_id"].__setitem__("nova", 9999), "speaker 'nova'"),
    (lambda c, s: c["talker_config"]["spk_is_dialect"].pop("ryan"), "no entry for speaker 'ryan'"),
    (lambda c, s: c["talker_config"]["code_predictor_config"].__setitem__("num_code_groups", 8), "num_code_groups"),
    (lambda c, s: c["talker_config"]["rope_scaling"].__setitem__("mrope_section", [1, 1, 1]), "mrope_section"),
    (lambda c, s: s["decoder_config"].__setitem__("upsample_rates", [8, 5, 4, 2]), "samples per frame"),
    (lambda c, s: s["decoder_config"].pop("codebook_dim"), "'codebook_dim' is missing"),
    (lambda c, s: c["talker_config"].__setitem__("num_hidden_layers", "two"), "must be an integer"),
])
def test_bad_configs_name_the_problem(model_dir, mutate, message):
    cfg, st = _raw_configs(model_dir("customvoice_0b6"))
    cfg, st = copy.deepcopy(cfg), copy.deepcopy(st)
    mutate(cfg, st)
    with pytest.raises(ConfigError, match=message.replace("(", r"\(")):
        parse_model_config(cfg, st, None)


def test_base_speaker_encoder_width_checked(model_dir):
    cfg, st = _raw_configs(model_dir("base_0b6"))
    cfg["speaker_encoder_config"]["enc_dim"] = 7
    with pytest.raises(ConfigError, match="enc_dim"):
        parse_model_config(cfg, st, None)


def test_missing_folder_and_files(tmp_path):
    with pytest.raises(ConfigError, match="nope does not exist"):
        load_model_config(tmp_path / "nope")
    (tmp_path / "file").write_text("{}")
    with pytest.raises(ConfigError, match="file is a file, not a folder"):
        load_model_config(tmp_path / "file")
    with pytest.raises(ConfigError, match="config.json is missing"):
        load_model_config(tmp_path)
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(ConfigError, match="not readable JSON"):
        load_model_config(tmp_path)

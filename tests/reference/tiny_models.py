"""Tiny, randomly initialised official Qwen3-TTS models (runs in the reference venv).

Widths and depths are shrunk; the codec-token space (3072 ids, codebook 2048, every control,
language and speaker id), the 16 code groups, the text-token ids of the special tokens and the
codec's real rates (1920 samples per frame at 24 kHz) are the real ones, so prompt layout, id
handling and shapes are exercised as in the released checkpoints.
"""

import importlib.machinery
import json
import os
import sys
import types


def stub_torchaudio():
    """qwen_tts imports its 25 Hz tokenizer, which imports torchaudio; PyPI's torchaudio does not
    import beside CPU torch. The 12 Hz path never calls it, so an empty stand-in is enough."""
    try:
        import torchaudio.compliance.kaldi  # noqa: F401
        return
    except Exception:
        pass
    for name in [k for k in sys.modules if k.split(".")[0] == "torchaudio"]:
        del sys.modules[name]
    mods = {}
    for name in ("torchaudio", "torchaudio.compliance", "torchaudio.compliance.kaldi"):
        m = types.ModuleType(name)
        m.__spec__ = importlib.machinery.ModuleSpec(name, None, is_package=not name.endswith("kaldi"))
        if not name.endswith("kaldi"):
            m.__path__ = []
        mods[name] = m
    mods["torchaudio"].compliance = mods["torchaudio.compliance"]
    mods["torchaudio.compliance"].kaldi = mods["torchaudio.compliance.kaldi"]
    sys.modules.update(mods)


stub_torchaudio()

import numpy as np  # noqa: E402
import torch  # noqa: E402

# Real ids (qwen3-tts-architecture.md §2.1).
TEXT_VOCAB = 151936
SPECIAL_TEXT = {
    151643: "<|endoftext|>", 151644: "<|im_start|>", 151645: "<|im_end|>",
    151669: "<|audio_start|>", 151670: "<|audio_end|>", 151671: "<tts_pad>",
    151672: "<tts_text_bos>", 151673: "<tts_text_eod>", 151674: "<tts_text_bos_single>",
    151675: "<|audio_pad|>",
}
ASSISTANT_ID, USER_ID, NEWLINE_ID = 77091, 872, 198
CODEC_IDS = dict(codec_pad_id=2148, codec_bos_id=2149, codec_eos_token_id=2150, codec_think_id=2154,
                 codec_nothink_id=2155, codec_think_bos_id=2156, codec_think_eos_id=2157)
LANGUAGES = {"english": 2050, "german": 2053, "spanish": 2054, "chinese": 2055, "japanese": 2058,
             "french": 2061, "korean": 2064, "russian": 2069, "italian": 2070, "portuguese": 2071}
DIALECTS = {"sichuan_dialect": 2062, "beijing_dialect": 2074}
SPEAKERS = {"vivian": 3065, "serena": 3066, "uncle_fu": 3010, "dylan": 2878, "eric": 2875,
            "ryan": 3061, "aiden": 2861, "ono_anna": 2873, "sohee": 2864}
SPEAKER_DIALECT = {name: False for name in SPEAKERS}
SPEAKER_DIALECT.update(eric="sichuan_dialect", dylan="beijing_dialect")
GENERATION_CONFIG = {"do_sample": True, "repetition_penalty": 1.05, "temperature": 0.9, "top_p": 1.0,
                     "top_k": 50, "subtalker_dosample": True, "subtalker_temperature": 0.9,
                     "subtalker_top_p": 1.0, "subtalker_top_k": 50, "max_new_tokens": 8192}

# name -> (tts_model_type, tts_model_size, code-predictor hidden size)
VARIANTS = {
    "customvoice_0b6": ("custom_voice", "0b6", 64),  # predictor as wide as the talker: identity projection
    "customvoice_1b7": ("custom_voice", "1b7", 32),  # narrower predictor: small_to_mtp_projection is Linear
    "voicedesign_1b7": ("voice_design", "1b7", 32),
    "base_0b6": ("base", "0b6", 64),                 # speaker encoder present
}
TALKER_HIDDEN = 64


def tts_config(variant):
    from qwen_tts.core.models.configuration_qwen3_tts import Qwen3TTSConfig

    model_type, size, cp_hidden = VARIANTS[variant]
    code_predictor = dict(vocab_size=2048, hidden_size=cp_hidden, intermediate_size=2 * cp_hidden,
                          num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, head_dim=16,
                          rope_theta=1_000_000, rms_norm_eps=1e-6, max_position_embeddings=65536,
                          num_code_groups=16)
    custom = model_type == "custom_voice"
    talker = dict(
        code_predictor_config=code_predictor, vocab_size=3072, hidden_size=TALKER_HIDDEN,
        intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
        head_dim=32, rope_theta=1_000_000, rms_norm_eps=1e-6, max_position_embeddings=32768,
        rope_scaling={"rope_type": "default", "type": "default", "mrope_section": [8, 4, 4],
                      "interleaved": True},
        num_code_groups=16, text_hidden_size=32, text_vocab_size=TEXT_VOCAB, position_id_per_seconds=13,
        codec_language_id={**LANGUAGES, **(DIALECTS if custom else {})},
        spk_id=dict(SPEAKERS) if custom else {}, spk_is_dialect=dict(SPEAKER_DIALECT) if custom else {},
        **CODEC_IDS,
    )
    speaker_encoder = dict(mel_dim=128, enc_dim=TALKER_HIDDEN, enc_channels=[32, 32, 32, 32, 96],
                           enc_kernel_sizes=[5, 3, 3, 3, 1], enc_dilations=[1, 2, 3, 4, 1],
                           enc_attention_channels=16, enc_res2net_scale=4, enc_se_channels=16,
                           sample_rate=24000)
    cfg = Qwen3TTSConfig(talker_config=talker, speaker_encoder_config=speaker_encoder,
                         tokenizer_type="qwen3_tts_tokenizer_12hz", tts_model_size=size,
                         tts_model_type=model_type, im_start_token_id=151644, im_end_token_id=151645,
                         tts_pad_token_id=151671, tts_bos_token_id=151672, tts_eos_token_id=151673)
    return cfg


def speech_tokenizer_config():
    from qwen_tts.core.tokenizer_12hz.configuration_qwen3_tts_tokenizer_v2 import Qwen3TTSTokenizerV2Config

    encoder = dict(sampling_rate=24000, frame_rate=12.5, audio_channels=1, hidden_size=64, num_filters=8,
                   kernel_size=7, residual_kernel_size=3, last_kernel_size=3, num_residual_layers=1,
                   dilation_growth_rate=2, compress=2, upsampling_ratios=[8, 6, 5, 4], upsample_groups=64,
                   num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=4, head_dim=16,
                   intermediate_size=128, max_position_embeddings=8000, sliding_window=250,
                   rope_theta=10000.0, norm_eps=1e-5, layer_scale_initial_scale=0.01,
                   num_quantizers=32, num_semantic_quantizers=1, codebook_size=2048, codebook_dim=16,
                   vector_quantization_hidden_dimension=16, pad_mode="constant", use_causal_conv=True,
                   use_conv_shortcut=False, trim_right_ratio=1.0)
    decoder = dict(codebook_size=2048, codebook_dim=32, latent_dim=64, decoder_dim=96, hidden_size=32,
                   intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=4,
                   head_dim=8, hidden_act="silu", rms_norm_eps=1e-5, rope_theta=10000,
                   max_position_embeddings=8000, sliding_window=72, layer_scale_initial_scale=0.01,
                   attention_bias=False, num_quantizers=16, upsample_rates=[8, 5, 4, 3],
                   upsampling_ratios=[2, 2])
    return Qwen3TTSTokenizerV2Config(encoder_config=encoder, decoder_config=decoder,
                                     encoder_valid_num_quantizers=16, input_sample_rate=24000,
                                     output_sample_rate=24000, decode_upsample_rate=1920,
                                     encode_downsample_rate=1920)


@torch.no_grad()
def randomize_(module, seed, gain=1.0):
    """Default inits are degenerate (zero codebooks, SnakeBeta 0, LayerScale 0.01, ConvNeXt gamma
    1e-6, unit norms): a parity test would be blind to whole blocks. Weights get fan-in scaled
    noise so activations stay in range through the real-depth vocoder."""
    g = torch.Generator().manual_seed(seed)

    def noise(shape):
        return torch.randn(shape, generator=g, dtype=torch.float32)

    for name, p in list(module.named_parameters()) + list(module.named_buffers()):
        if not p.is_floating_point():
            continue
        leaf = name.rsplit(".", 1)[-1]
        if leaf in ("cluster_usage",):
            p.copy_(0.5 + noise(p.shape).abs())
        elif leaf in ("embedding_sum", "embed_sum"):
            p.copy_(noise(p.shape))
        elif "inv_freq" in name or leaf == "initialized":
            continue
        elif leaf in ("alpha", "beta"):  # SnakeBeta, log-space
            p.copy_(0.3 * noise(p.shape))
        elif p.ndim == 1 and ("norm" in name or "scale" in name or leaf == "gamma"):
            p.copy_(1.0 + 0.1 * noise(p.shape) if "norm" in name else 0.5 + 0.1 * noise(p.shape))
        elif p.ndim == 1:
            p.copy_(0.05 * noise(p.shape))
        elif "embedding" in name or "embed_tokens" in name:
            p.copy_(noise(p.shape))
        else:
            fan_in = p[0].numel() if "convtr" not in name else p.shape[0] * p.shape[2]
            p.copy_(gain * noise(p.shape) / max(fan_in, 1) ** 0.5)
    return module


def _gpt2_byte_alphabet():
    """The 256 byte symbols of byte-level BPE, in the order that gives the real Qwen2 ids
    (so '\\n' is 198 and ' ' is 220)."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + \
        list(range(ord("®"), ord("ÿ") + 1))
    rest = [b for b in range(256) if b not in printable]
    symbols = {b: chr(b) for b in printable}
    symbols.update({b: chr(256 + i) for i, b in enumerate(rest)})
    return [symbols[b] for b in printable + rest], symbols


MERGE_WORDS = ["assistant", "user", "Ġhello", "hello", "Ġworld", "Ġthe", "Ġis", "Ġa", "Ġtest", "Ġthis",
               "This", "Ġspeak", "Ġvoice", "Ġtext", "Ġwarm", "Ġcalm", "Ġyoung", "Ġwoman", "ĠHello",
               "Ġand", "Ġto", "Ġof", "ing", "ĠĠ", "ĊĊ"]


def write_text_tokenizer(folder):
    """A small byte-level BPE in the real Qwen2 file layout: vocab.json + merges.txt +
    tokenizer_config.json (no tokenizer.json, as in the released repos). 'assistant', 'user' and
    '\\n' keep their real ids, special tokens their real added-token ids."""
    alphabet, _ = _gpt2_byte_alphabet()
    vocab = {sym: i for i, sym in enumerate(alphabet)}
    merges, fixed = [], {"assistant": ASSISTANT_ID, "user": USER_ID}
    next_id = 256
    for word in MERGE_WORDS:
        cur = word[0]
        for ch in word[1:]:
            merged = cur + ch
            if (cur, ch) not in merges:
                merges.append((cur, ch))
            if merged not in vocab:
                if merged in fixed:
                    vocab[merged] = fixed[merged]
                else:
                    while next_id in fixed.values():
                        next_id += 1
                    vocab[merged] = next_id
                    next_id += 1
            cur = merged
    used = set(vocab.values())
    filler = (i for i in range(151643) if i not in used)
    for i in filler:  # unreachable placeholder entries keep the id space dense, as in the real vocab
        vocab[f"<|reserved_{i}|>"] = i
    with open(os.path.join(folder, "vocab.json"), "w", encoding="utf-8") as f:
        json.dump(vocab, f, ensure_ascii=False)
    with open(os.path.join(folder, "merges.txt"), "w", encoding="utf-8") as f:
        f.write("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges))
    added = {}
    for i in range(151643, 151676):
        content = SPECIAL_TEXT.get(i, f"<|extra_{i}|>")
        added[str(i)] = dict(content=content, lstrip=False, normalized=False, rstrip=False,
                             single_word=False, special=True)
    config = dict(add_bos_token=False, add_prefix_space=False, added_tokens_decoder=added,
                  bos_token=None, clean_up_tokenization_spaces=False, eos_token="<|im_end|>",
                  errors="replace", model_max_length=131072, pad_token="<|endoftext|>",
                  split_special_tokens=False, tokenizer_class="Qwen2Tokenizer", unk_token=None)
    with open(os.path.join(folder, "tokenizer_config.json"), "w", encoding="utf-8") as f:
        json.dump(config, f, indent=2, ensure_ascii=False)
    with open(os.path.join(folder, "preprocessor_config.json"), "w") as f:
        json.dump({"padding_side": "left", "padding_value": 0.0, "processor_class": "Qwen3TTSProcessor",
                   "return_attention_mask": True}, f, indent=2)


def build_tts_model(variant, seed):
    from qwen_tts.core.models.modeling_qwen3_tts import Qwen3TTSForConditionalGeneration

    torch.manual_seed(seed)
    cfg = tts_config(variant)
    model = Qwen3TTSForConditionalGeneration._from_config(cfg, attn_implementation="eager",
                                                          dtype=torch.float32).eval()
    randomize_(model, seed)
    with torch.no_grad():
        # Random heads give EOS a ~1/2049 chance per frame; a stronger EOS row makes EOS fall
        # inside the short greedy runs for some prompts and not for others.
        head = model.talker.codec_head.weight
        head[CODEC_IDS["codec_eos_token_id"]] *= 2.2
    return model


def build_speech_tokenizer(seed):
    from qwen_tts.core.tokenizer_12hz.modeling_qwen3_tts_tokenizer_v2 import Qwen3TTSTokenizerV2Model

    torch.manual_seed(seed)
    model = Qwen3TTSTokenizerV2Model(speech_tokenizer_config()).eval()
    randomize_(model.encoder, seed)
    # The vocoder is deep; this gain keeps its output well inside the final [-1, 1] clamp.
    randomize_(model.decoder, seed + 1, gain=0.65)
    return model


def save_snapshot(model, speech_tokenizer, folder):
    """Write the exact Hugging Face snapshot layout with the official save_pretrained."""
    from transformers import EncodecFeatureExtractor

    os.makedirs(folder, exist_ok=True)
    model.save_pretrained(folder, safe_serialization=True)
    st_dir = os.path.join(folder, "speech_tokenizer")
    speech_tokenizer.save_pretrained(st_dir, safe_serialization=True)
    EncodecFeatureExtractor(feature_size=1, sampling_rate=24000, padding_value=0.0).save_pretrained(st_dir)
    write_text_tokenizer(folder)
    with open(os.path.join(folder, "generation_config.json"), "w") as f:
        json.dump(GENERATION_CONFIG, f, indent=2)
    # save_pretrained writes speaker_encoder_config.model_type = "", which the official config
    # class cannot read back (its __init__ takes no **kwargs); the released files lack the key.
    path = os.path.join(folder, "config.json")
    with open(path) as f:
        cfg = json.load(f)
    cfg.get("speaker_encoder_config", {}).pop("model_type", None)
    with open(path, "w") as f:
        json.dump(cfg, f, indent=2)


def synthetic_wave(seconds=1.3, sr=24000, seed=0):
    """A voiced-like test signal: harmonics with vibrato plus a little noise."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * sr)) / sr
    f0 = 140 + 20 * np.sin(2 * np.pi * 3 * t)
    phase = 2 * np.pi * np.cumsum(f0) / sr
    wave = sum(np.sin(k * phase) / k for k in range(1, 6)) * 0.2
    wave *= 0.6 + 0.4 * np.sin(2 * np.pi * 1.5 * t) ** 2
    return (wave + 0.01 * rng.standard_normal(t.shape)).astype(np.float32)

"""Write a random-weight Qwen3-TTS checkpoint at a released shape, in the exact Hugging Face
layout, with the official classes (run in the reference venv):

    .venv-ref/bin/python bench/make_checkpoint.py 0.6b OUT_DIR

The talker is saved in bfloat16 and the speech tokenizer in float32, as in the released repos.
"""

import os
import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests" / "reference"))
sys.path.insert(0, str(ROOT / "bench"))
import tiny_models  # noqa: E402  (stubs torchaudio before qwen_tts is imported)
from shapes import config_dicts  # noqa: E402

import torch  # noqa: E402

# The released speech tokenizer (qwen3-tts-architecture.md §5.1).
DECODER = dict(codebook_size=2048, codebook_dim=512, latent_dim=1024, decoder_dim=1536, hidden_size=512,
               intermediate_size=1024, num_hidden_layers=8, num_attention_heads=16, num_key_value_heads=16,
               head_dim=64, sliding_window=72, num_quantizers=16, upsample_rates=[8, 5, 4, 3],
               upsampling_ratios=[2, 2], rms_norm_eps=1e-5, rope_theta=10000, max_position_embeddings=8000,
               layer_scale_initial_scale=0.01)
ENCODER = dict(sampling_rate=24000, frame_rate=12.5, audio_channels=1, hidden_size=512, num_filters=64,
               kernel_size=7, residual_kernel_size=3, last_kernel_size=3, num_residual_layers=1,
               dilation_growth_rate=2, compress=2, upsampling_ratios=[8, 6, 5, 4], num_hidden_layers=8,
               num_attention_heads=8, num_key_value_heads=8, head_dim=64, intermediate_size=2048,
               num_quantizers=32, num_semantic_quantizers=1, codebook_size=2048, codebook_dim=256,
               vector_quantization_hidden_dimension=256, use_causal_conv=True, pad_mode="constant")


def main(shape, out):
    from qwen_tts.core.models.configuration_qwen3_tts import Qwen3TTSConfig
    from qwen_tts.core.models.modeling_qwen3_tts import Qwen3TTSForConditionalGeneration
    from qwen_tts.core.tokenizer_12hz.configuration_qwen3_tts_tokenizer_v2 import Qwen3TTSTokenizerV2Config
    from qwen_tts.core.tokenizer_12hz.modeling_qwen3_tts_tokenizer_v2 import Qwen3TTSTokenizerV2Model

    cfg, _, _ = config_dicts(shape)
    for key in ("architectures", "dtype", "transformers_version", "model_type"):
        cfg.pop(key, None)
    torch.manual_seed(0)
    model = Qwen3TTSForConditionalGeneration._from_config(Qwen3TTSConfig(**cfg), dtype=torch.bfloat16)
    st_cfg = Qwen3TTSTokenizerV2Config(encoder_config=ENCODER, decoder_config=DECODER)
    tokenizer = Qwen3TTSTokenizerV2Model(st_cfg).eval()
    tiny_models.randomize_(tokenizer, 0)
    tmp = Path(str(out) + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tiny_models.save_snapshot(model, tokenizer, tmp)
    os.replace(tmp, out)


if __name__ == "__main__":
    main(sys.argv[1], Path(sys.argv[2]))

"""Build the tiny official Qwen3-TTS fixtures and the reference dumps the parity tests compare with.

Runs in the reference venv (qwen-tts 0.1.1, torch CPU, transformers 4.57.3):

    .venv-ref/bin/python tests/reference/build_fixtures.py OUT_DIR

OUT_DIR/models/<variant>/   Hugging Face snapshot layout, written by the official save_pretrained
OUT_DIR/dumps/<variant>/    <case>.npz per greedy generation case, cases.json describing them
OUT_DIR/dumps/codec/        decoder waveforms; OUT_DIR/dumps/base_0b6/voice.npz clone inputs
OUT_DIR/dumps/processors.npz  official logits processors on sample inputs
Everything is float32. See tests/reference/README.md.
"""

import json
import os
import sys
import warnings

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import tiny_models as T  # noqa: E402  (stubs torchaudio before qwen_tts is imported)

import numpy as np  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(2)
warnings.filterwarnings("ignore")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
import transformers  # noqa: E402

transformers.logging.set_verbosity_error()

MAX_NEW_TOKENS = 24
TEXT_EN = "Hello world, this is a test."
TEXT_ZH = "你好，世界。"
TEXT_RU = "Привет!"
TEXT_NUM = "On 12 March 2026, 3.5 kg cost $1,299.99 (42% off)."
INSTRUCT = "A calm young woman with a warm voice."
REF_TEXT = "This is the voice to speak with."

# (case name, text, speaker, language, instruct, non_streaming)
CASES = {
    "customvoice_0b6": [
        ("en_ryan_nonstream", TEXT_EN, "ryan", "english", None, True),
        ("en_ryan_stream", TEXT_EN, "ryan", "english", None, False),
        ("auto_vivian_nonstream", TEXT_EN, "vivian", "auto", None, True),
        ("ru_serena_stream", TEXT_RU, "serena", "russian", None, False),
        ("zh_dylan_dialect_nonstream", TEXT_ZH, "dylan", "chinese", None, True),
        ("auto_eric_dialect_stream", TEXT_ZH, "eric", "auto", None, False),
    ],
    "customvoice_1b7": [
        ("en_aiden_nonstream", TEXT_EN, "aiden", "english", None, True),
        ("instruct_sohee_stream", TEXT_EN, "sohee", "english", INSTRUCT, False),
        ("instruct_uncle_fu_auto_nonstream", TEXT_ZH, "uncle_fu", "auto", INSTRUCT, True),
        ("numbers_aiden_stream", TEXT_NUM, "aiden", "english", None, False),
    ],
    "voicedesign_1b7": [
        ("design_nonstream", TEXT_EN, None, "english", INSTRUCT, True),
        ("design_auto_stream", TEXT_EN, None, "auto", INSTRUCT, False),
    ],
}
# Base: (case name, text, language, mode, non_streaming)
BASE_CASES = [
    ("xvec_nonstream", TEXT_EN, "english", "xvector", True),
    ("xvec_stream", TEXT_EN, "auto", "xvector", False),
    ("icl_nonstream", TEXT_EN, "english", "icl", True),
    ("icl_stream", TEXT_EN, "english", "icl", False),
]


class LogitRecorder:
    """Records the official talker and code-predictor logits at every generation step."""

    def __init__(self, model):
        self.talker, self.predictor = [], []
        talker = model.talker
        self.handles = [talker.codec_head.register_forward_hook(self._talker_hook)]
        for j, head in enumerate(talker.code_predictor.lm_head):
            self.handles.append(head.register_forward_hook(self._predictor_hook))

    def _talker_hook(self, mod, args, out):
        self.talker.append(out[0, -1].detach().float().numpy().copy())

    def _predictor_hook(self, mod, args, out):
        self.predictor.append(out[0, -1].detach().float().numpy().copy())

    def close(self):
        for h in self.handles:
            h.remove()


def prompt_tensors(model, input_id, instruct_id, speaker, language, non_streaming, clone=None, ref_id=None):
    """The prefill embeddings and trailing text exactly as the official generate() builds them,
    captured from the talker's own generate call."""
    captured = {}
    orig = model.talker.generate

    def grab(**kw):
        captured["prefill"] = kw["inputs_embeds"].detach().numpy().copy()
        captured["trailing"] = kw["trailing_text_hidden"].detach().numpy().copy()
        captured["tts_pad"] = kw["tts_pad_embed"].detach().numpy().copy()
        raise StopIteration

    model.talker.generate = grab
    try:
        model.generate(input_ids=[input_id], instruct_ids=[instruct_id], languages=[language],
                       speakers=[speaker], non_streaming_mode=non_streaming, voice_clone_prompt=clone,
                       ref_ids=[ref_id] if ref_id is not None else None, max_new_tokens=2)
    except StopIteration:
        pass
    finally:
        model.talker.generate = orig
    return captured


def greedy_case(wrapper, input_id, instruct_id, speaker, language, non_streaming, clone=None, ref_id=None):
    model = wrapper.model
    out = prompt_tensors(model, input_id, instruct_id, speaker, language, non_streaming, clone, ref_id)
    rec = LogitRecorder(model)
    try:
        codes, _ = model.generate(input_ids=[input_id], instruct_ids=[instruct_id], languages=[language],
                                  speakers=[speaker], non_streaming_mode=non_streaming,
                                  voice_clone_prompt=clone, ref_ids=[ref_id] if ref_id is not None else None,
                                  max_new_tokens=MAX_NEW_TOKENS, do_sample=False, subtalker_dosample=False,
                                  repetition_penalty=1.05)
    finally:
        rec.close()
    codes = codes[0].numpy().astype(np.int64)
    talker = np.stack(rec.talker)
    predictor = np.stack(rec.predictor).reshape(-1, 15, 2048)
    out.update(codes=codes, talker_logits=talker, predictor_logits=predictor,
               input_ids=input_id.numpy()[0],
               instruct_ids=instruct_id.numpy()[0] if instruct_id is not None else np.zeros(0, np.int64))
    wav = model.speech_tokenizer.decode([{"audio_codes": torch.from_numpy(codes)}])[0][0] \
        if len(codes) else np.zeros(0, np.float32)
    out["wav"] = np.asarray(wav, np.float32)
    return out


def build_official_batches(wrapper, variant, dumps):
    """The official batch call (list inputs): all cases of a variant that share a text mode in
    one greedy generate(); batch_<mode>.npz holds each row's codes under its case name."""
    for non_streaming in (True, False):
        rows = [c for c in CASES[variant] if c[5] == non_streaming]
        if len(rows) < 2:
            continue
        input_ids = [tokenize(wrapper, wrapper._build_assistant_text(text)) for _, text, *_ in rows]
        instruct_ids = [tokenize(wrapper, wrapper._build_instruct_text(c[4])) if c[4] else None for c in rows]
        codes, _ = wrapper.model.generate(
            input_ids=input_ids, instruct_ids=instruct_ids, languages=[c[3] for c in rows],
            speakers=[c[2] for c in rows], non_streaming_mode=non_streaming, max_new_tokens=MAX_NEW_TOKENS,
            do_sample=False, subtalker_dosample=False, repetition_penalty=1.05)
        mode = "nonstream" if non_streaming else "stream"
        np.savez(os.path.join(dumps, f"batch_{mode}.npz"),
                 **{c[0]: codes[i].numpy().astype(np.int64) for i, c in enumerate(rows)})
        print(f"  {variant}/batch_{mode}: {len(rows)} rows", flush=True)


def tokenize(wrapper, text):
    return wrapper.processor(text=text, return_tensors="pt", padding=True)["input_ids"]


def build_variant(root, variant, seed, speech_tokenizer):
    from qwen_tts import Qwen3TTSModel

    folder = os.path.join(root, "models", variant)
    T.save_snapshot(T.build_tts_model(variant, seed), speech_tokenizer, folder)
    # Reload exactly as a user would: from the saved folder, with the official loader.
    wrapper = Qwen3TTSModel.from_pretrained(folder, dtype=torch.float32, attn_implementation="eager")
    dumps = os.path.join(root, "dumps", variant)
    os.makedirs(dumps, exist_ok=True)
    meta = {}
    if variant == "base_0b6":
        cases = build_base_cases(wrapper, dumps)
    else:
        cases = []
        for name, text, speaker, language, instruct, non_streaming in CASES[variant]:
            input_id = tokenize(wrapper, wrapper._build_assistant_text(text))
            instruct_id = tokenize(wrapper, wrapper._build_instruct_text(instruct)) if instruct else None
            out = greedy_case(wrapper, input_id, instruct_id, speaker, language, non_streaming)
            cases.append((name, out, dict(text=text, speaker=speaker, language=language, instruct=instruct,
                                          non_streaming=non_streaming)))
    if variant != "base_0b6":
        build_official_batches(wrapper, variant, dumps)
    for name, out, args in cases:
        np.savez(os.path.join(dumps, f"{name}.npz"), **out)
        eos = len(out["talker_logits"]) == len(out["codes"]) + 1 and len(out["codes"]) < MAX_NEW_TOKENS - 1
        meta[name] = dict(args, frames=int(len(out["codes"])), ended_with_eos=bool(eos),
                          max_new_tokens=MAX_NEW_TOKENS)
        print(f"  {variant}/{name}: {len(out['codes'])} frames, eos={eos}", flush=True)
    with open(os.path.join(dumps, "cases.json"), "w") as f:
        json.dump(meta, f, indent=2, ensure_ascii=False)


def build_base_cases(wrapper, dumps):
    from qwen_tts.core.models.modeling_qwen3_tts import mel_spectrogram

    model = wrapper.model
    wave = T.synthetic_wave()
    mel = mel_spectrogram(torch.from_numpy(wave)[None], n_fft=1024, num_mels=128, sampling_rate=24000,
                          hop_size=256, win_size=1024, fmin=0, fmax=12000).transpose(1, 2)
    xvec = model.extract_speaker_embedding(wave, 24000)
    st = model.speech_tokenizer
    latents = {}
    quantizer = st.model.encoder.quantizer
    orig_encode = quantizer.encode

    def encode_hook(embeddings, *a, **k):
        latents["pre_quant"] = embeddings.detach().numpy().copy()
        return orig_encode(embeddings, *a, **k)

    quantizer.encode = encode_hook
    ref_code = st.encode(wave, sr=24000).audio_codes[0]
    quantizer.encode = orig_encode
    np.savez(os.path.join(dumps, "voice.npz"), wave=wave, mel=mel.numpy()[0], xvector=xvec.numpy(),
             ref_codes=ref_code.numpy().astype(np.int64), pre_quant_latents=latents["pre_quant"][0].T)
    ref_id = tokenize(wrapper, wrapper._build_ref_text(REF_TEXT))
    cases = []
    for name, text, language, mode, non_streaming in BASE_CASES:
        icl = mode == "icl"
        clone = dict(ref_code=[ref_code if icl else None], ref_spk_embedding=[xvec],
                     x_vector_only_mode=[not icl], icl_mode=[icl])
        input_id = tokenize(wrapper, wrapper._build_assistant_text(text))
        out = greedy_case(wrapper, input_id, None, None, language, non_streaming, clone,
                          ref_id if icl else None)
        out["ref_ids"] = ref_id.numpy()[0] if icl else np.zeros(0, np.int64)
        if icl and len(out["codes"]):
            # The official voice-clone post-processing: decode reference + generated, trim the reference.
            full = torch.cat([ref_code, torch.from_numpy(out["codes"])], 0)
            wav = st.decode([{"audio_codes": full}])[0][0]
            cut = int(len(ref_code) / len(full) * len(wav))
            out["wav"] = np.asarray(wav[cut:], np.float32)
        cases.append((name, out, dict(text=text, speaker=None, language=language, instruct=None,
                                      non_streaming=non_streaming, mode=mode,
                                      ref_text=REF_TEXT if icl else None)))
    return cases


def build_codec_dumps(root, speech_tokenizer):
    dumps = os.path.join(root, "dumps", "codec")
    os.makedirs(dumps, exist_ok=True)
    g = torch.Generator().manual_seed(21)
    for frames in (1, 5, 17, 340):
        codes = torch.randint(0, 2048, (1, frames, 16), generator=g)
        with torch.no_grad():
            official = speech_tokenizer.decode(codes, return_dict=True).audio_values[0]  # chunked (300/25)
            one_pass = speech_tokenizer.decoder(codes.transpose(1, 2))[0, 0]  # single causal pass
        np.savez(os.path.join(dumps, f"decode_{frames}.npz"), codes=codes.numpy()[0].astype(np.int64),
                 wav=official.numpy().astype(np.float32), wav_one_pass=one_pass.numpy().astype(np.float32))
        print(f"  codec/decode_{frames}: {official.shape[0]} samples, rms {float(official.pow(2).mean().sqrt()):.3f}")


def build_processor_dumps(root):
    from transformers.generation.logits_process import (
        MinNewTokensLengthLogitsProcessor, RepetitionPenaltyLogitsProcessor, SuppressTokensLogitsProcessor,
        TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper)

    g = torch.Generator().manual_seed(5)
    scores = torch.randn(4, 3072, generator=g) * 3
    history = torch.randint(0, 2048, (4, 6), generator=g)
    suppress = [i for i in range(2048, 3072) if i != 2150]
    out = dict(scores=scores.numpy(), history=history.numpy())
    out["repetition_penalty"] = RepetitionPenaltyLogitsProcessor(1.05)(history, scores.clone()).numpy()
    out["min_new_tokens"] = MinNewTokensLengthLogitsProcessor(0, 2, 2150)(history[:, :1], scores.clone()).numpy()
    out["suppress"] = SuppressTokensLogitsProcessor(suppress)(history, scores.clone()).numpy()
    out["temperature"] = TemperatureLogitsWarper(0.9)(history, scores.clone()).numpy()
    out["top_k"] = TopKLogitsWarper(50)(history, scores.clone()).numpy()
    out["top_p"] = TopPLogitsWarper(0.8)(history, scores.clone()).numpy()
    np.savez(os.path.join(root, "dumps", "processors.npz"), **out)


def main():
    root = os.path.abspath(sys.argv[1])
    os.makedirs(os.path.join(root, "dumps"), exist_ok=True)
    speech_tokenizer = T.build_speech_tokenizer(seed=100)
    for i, variant in enumerate(T.VARIANTS):
        build_variant(root, variant, seed=10 + i, speech_tokenizer=speech_tokenizer)
    build_codec_dumps(root, speech_tokenizer)
    build_processor_dumps(root)


if __name__ == "__main__":
    main()

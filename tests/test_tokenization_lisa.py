"""``tokenization_lisa`` against an oracle of transformers 4.31's slow LLaMA tokenizer, written from its algorithm.

The oracle (``reference_encode``) does what ``PreTrainedTokenizer.tokenize`` + ``LlamaTokenizer(legacy=True)`` did:
split the text at added and special tokens (leftmost, longest), strip the whitespace on both sides of every added
token (not around ``<s>``/``</s>``/``<unk>``), and encode each remaining chunk with sentencepiece itself. Our
tokenizer is a ``tokenizers`` pipeline; both must agree on any text, for the fixture's model and for one trained here.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from transformers import CLIPImageProcessor

from rosalia_hf.processing_rosalia import RosaliaProcessor
from rosalia_hf.tokenization_lisa import LisaTokenizerError, load_lisa_tokenizer

spm = pytest.importorskip("sentencepiece")

FIXTURE = Path(__file__).parent / "fixtures" / "lisa_reference" / "lisa"
ADDED = ("[SEG]", "<im_start>", "<im_end>")
SPECIAL = ("<s>", "</s>", "<unk>")
CORPUS = [
    "Segment the opacity in the right lung base. There is no pleural effusion in the left lung.",
    "Where is the consolidation? Please output segmentation mask. Sure, it is the heart.",
    "Mild pulmonary edema; small bilateral effusions, left more than right. No pneumothorax.",
    "Cardiomegaly is stable. Atelectasis at the left base, likely scarring or pneumonia.",
] * 30


def reference_encode(sp, text: str, added: dict[str, int]) -> list[int]:
    """transformers 4.31 ``LlamaTokenizer(legacy=True)(text).input_ids`` (``<s>`` first), from sentencepiece."""
    tokens = sorted([*added, *SPECIAL], key=len, reverse=True)
    parts = re.split("(" + "|".join(re.escape(t) for t in tokens) + ")", text)
    for i, part in enumerate(parts):
        if part in added:
            if i > 0:
                parts[i - 1] = parts[i - 1].rstrip()
            if i + 1 < len(parts):
                parts[i + 1] = parts[i + 1].lstrip()
    ids = [sp.piece_to_id("<s>")]
    for part in parts:
        if not part:
            continue
        if part in added:
            ids.append(added[part])
        elif part in SPECIAL:
            ids.append(sp.piece_to_id(part))
        else:
            ids.extend(sp.encode(part))
    return ids


def lisa_tokenizer_folder(root: Path, model: Path, added: dict[str, int] | None = None) -> Path:
    """A LISA tokenizer folder (slow files only) around a sentencepiece ``model``."""
    root.mkdir(parents=True, exist_ok=True)
    shutil.copy(model, root / "tokenizer.model")
    size = spm.SentencePieceProcessor(model_file=str(model)).get_piece_size()
    added = added if added is not None else {t: size + i for i, t in enumerate(ADDED)}
    (root / "added_tokens.json").write_text(json.dumps(added))
    for name in ("tokenizer_config.json", "special_tokens_map.json"):
        shutil.copy(FIXTURE / name, root / name)
    return root


@pytest.fixture(scope="module")
def trained_model(tmp_path_factory) -> Path:
    """A LLaMA-like sentencepiece BPE (identity normaliser, whitespace kept, byte fallback), 300 pieces."""
    root = tmp_path_factory.mktemp("spm")
    spm.SentencePieceTrainer.train(sentence_iterator=iter(CORPUS), model_prefix=str(root / "m"), vocab_size=300,
                                   model_type="bpe", byte_fallback=True, normalization_rule_name="identity",
                                   remove_extra_whitespaces=False, split_digits=True, minloglevel=2,
                                   unk_id=0, bos_id=1, eos_id=2, pad_id=-1)
    return root / "m.model"


@pytest.fixture(scope="module", params=["fixture", "trained"])
def pair(request, trained_model, tmp_path_factory):
    model = FIXTURE / "tokenizer.model" if request.param == "fixture" else trained_model
    folder = lisa_tokenizer_folder(tmp_path_factory.mktemp("tok"), model)
    sp = spm.SentencePieceProcessor(model_file=str(model))
    added = json.loads((folder / "added_tokens.json").read_text())
    return sp, load_lisa_tokenizer(folder), added


# Text made of words, spaces, newlines, punctuation, non-ASCII letters (byte fallback) and the added tokens.
_PIECES = st.sampled_from(["Segment", " the", "opacity", "  ", " ", "\n", "\t", ".", ",", "?", ":", "é", "中",
                           "lung", "ASSISTANT:", "USER:", "</s>", "<s>", *ADDED, " [SEG] ", "x\n [SEG]\n y",
                           "0123", "'s", "-"])
TEXTS = st.lists(_PIECES, max_size=14).map("".join)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=TEXTS)
def test_ids_equal_the_slow_reference_tokenizer(pair, text):
    sp, tok, added = pair
    assert tok(text)["input_ids"] == reference_encode(sp, text, added), repr(text)


def test_lisa_prompts_equal_the_oracle(pair):
    sp, tok, added = pair
    system = "A chat between a curious human and an artificial intelligence assistant."
    for answer in ("Sure, it is [SEG].", "[SEG] There is no edema in the left lung base.", "[SEG] and [SEG]."):
        text = f"{system} USER: <im_start><im_end>\nSegment the edema. ASSISTANT: {answer}</s>"
        assert tok(text)["input_ids"] == reference_encode(sp, text, added)


def test_reloaded_tokenizer_gives_the_same_ids(pair, tmp_path):
    sp, tok, added = pair
    tok.save_pretrained(tmp_path)
    assert not (tmp_path / "tokenizer.model").exists() or (tmp_path / "tokenizer.json").exists()
    from transformers import AutoTokenizer

    again = AutoTokenizer.from_pretrained(tmp_path)
    text = "USER: <im_start><im_end>\nWhere is it? ASSISTANT: Sure, [SEG].</s>USER: again  [SEG] x"
    assert again(text)["input_ids"] == tok(text)["input_ids"] == reference_encode(sp, text, added)


def test_processor_on_lisa_tokenizer_keeps_ids_and_adds_image_last(pair):
    sp, tok, added = pair
    processor = RosaliaProcessor(CLIPImageProcessor(), tok, image_seq_length=4)
    assert processor.seg_token_id == added["[SEG]"]
    assert processor.image_token_id == max(added.values()) + 1
    text = "<im_start><image><image><im_end>\nSegment the lung."
    ids = processor.tokenizer(text)["input_ids"]
    assert ids.count(processor.image_token_id) == 2
    without = [i for i in ids if i != processor.image_token_id]
    assert without == reference_encode(sp, text.replace("<image>", ""), added)


# ------------------------------------------------------------------ bad input: file and field named


def test_missing_tokenizer_model_is_named(tmp_path):
    with pytest.raises(LisaTokenizerError, match=r"tokenizer\.model: missing"):
        load_lisa_tokenizer(tmp_path)


def test_added_ids_with_a_gap_are_refused(trained_model, tmp_path):
    folder = lisa_tokenizer_folder(tmp_path, trained_model, {"[SEG]": 300, "<im_start>": 302, "<im_end>": 303})
    with pytest.raises(LisaTokenizerError, match=r"added_tokens\.json: added token ids .* without gaps"):
        load_lisa_tokenizer(folder)


def test_added_ids_outside_the_config_vocab_are_refused(trained_model, tmp_path):
    folder = lisa_tokenizer_folder(tmp_path, trained_model)
    with pytest.raises(LisaTokenizerError, match=r"added_tokens\.json: ids .*'<im_end>': 302.* vocab_size 302"):
        load_lisa_tokenizer(folder, vocab_size=302)
    assert len(load_lisa_tokenizer(folder, vocab_size=303)) == 303


def test_missing_seg_or_delimiters_are_named(trained_model, tmp_path):
    folder = lisa_tokenizer_folder(tmp_path, trained_model, {"[SEG]": 300})
    with pytest.raises(LisaTokenizerError, match="no id for <im_start>, <im_end>"):
        load_lisa_tokenizer(folder)
    assert load_lisa_tokenizer(folder, use_im_start_end=False).convert_tokens_to_ids("[SEG]") == 300


def test_a_normalising_sentencepiece_model_is_refused(tmp_path):
    spm.SentencePieceTrainer.train(sentence_iterator=iter(CORPUS), model_prefix=str(tmp_path / "nfkc"),
                                   vocab_size=320, model_type="bpe", byte_fallback=True, minloglevel=2)
    folder = lisa_tokenizer_folder(tmp_path / "lisa", tmp_path / "nfkc.model")
    with pytest.raises(LisaTokenizerError, match="not a LLaMA sentencepiece model: normalizer_spec.name 'nmt_nfkc'"):
        load_lisa_tokenizer(folder)


def test_a_corrupt_tokenizer_model_is_named(tmp_path):
    folder = lisa_tokenizer_folder(tmp_path, FIXTURE / "tokenizer.model")
    (folder / "tokenizer.model").write_bytes(b"\x00not a model")
    with pytest.raises(LisaTokenizerError, match=r"tokenizer\.model: not a sentencepiece model"):
        load_lisa_tokenizer(folder)

"""The decoding pieces every token-loop engine shares (covip.sdk.engines._decode): the incremental detokenizer
gives exactly the pieces of decoding the whole sequence at every token, at O(1) cost per token, and stop strings
are cut correctly across token boundaries."""

from __future__ import annotations

import random

import pytest

from covip.sdk.engines._decode import Detokenizer, StopFilter

TEXTS = [
    "안녕하세요, 반갑습니다! 오늘 날씨가 정말 좋네요.",
    "Emoji 😀🎉👍🏽 and a family 👨‍👩‍👧 in one line.",
    "It's fine , isn't it ? I'm here ' s . ok ! We've won, they're late.",
    "日本語のテキスト、そして中文。Ελληνικά και русский текст.",
    "code:\n    x = 1\n\n\ty = [x for x in range(3)]  # done",
]


class FullDecode:
    """The reference: decode the whole sequence at every token and return the settled new text (what the
    detokenizer did before it became incremental)."""

    def __init__(self, tokenizer) -> None:
        self._tok, self._ids, self._done = tokenizer, [], 0

    def push(self, token: int) -> str:
        self._ids.append(token)
        full = self._tok.decode(self._ids, skip_special_tokens=True)
        safe = len(full.rstrip("\ufffd"))
        piece = full[self._done:safe] if safe > self._done else ""
        self._done = max(self._done, safe)
        return piece

    def flush(self) -> str:
        full = self._tok.decode(self._ids, skip_special_tokens=True)
        piece = full[self._done:]
        self._done = len(full)
        return piece


def pieces(cls, tokenizer, ids: list[int]) -> list[str]:
    d = cls(tokenizer)
    return [d.push(t) for t in ids] + [d.flush()]


class Counting:
    """A tokenizer wrapper counting the ids each decode call is given."""

    def __init__(self, tok) -> None:
        self.tok, self.decoded = tok, 0

    def decode(self, ids, skip_special_tokens=True):
        self.decoded += len(ids)
        return self.tok.decode(ids, skip_special_tokens=skip_special_tokens)


@pytest.fixture(scope="module")
def smol_tokenizers(tiny_vlm_dir):
    """The real SmolLM2 tokenizer (of the tiny VLM) as transformers loads it and as the ONNX engine reads it."""
    transformers = pytest.importorskip("transformers")
    from covip.sdk.engines._onnx_util import TokenizerAdapter

    hf = transformers.AutoTokenizer.from_pretrained(str(tiny_vlm_dir))
    return {"transformers": hf, "onnx": TokenizerAdapter(tiny_vlm_dir / "tokenizer.json"),
            "onnx-cleanup": TokenizerAdapter(tiny_vlm_dir / "tokenizer.json", clean_up_spaces=True)}


def _random_ids(rng: random.Random, hf, n_trials: int):
    vocab = len(hf)
    text_ids = [i for t in TEXTS for i in hf.encode(t, add_special_tokens=False)]
    special = [hf.convert_tokens_to_ids(t) for t in ("<|im_end|>", "<|im_start|>", "<|image_pad|>", "<|vision_start|>")]
    for trial in range(n_trials):
        kind = trial % 4
        if kind == 0:  # a real text: its multi-byte characters split across tokens
            text = rng.choice(TEXTS)
            start = rng.randrange(len(text))
            yield hf.encode(text[start:], add_special_tokens=False)
        elif kind == 1:  # tokens of those texts shuffled: characters cut and never completed, or completed wrongly
            yield [rng.choice(text_ids) for _ in range(rng.randrange(1, 60))]
        elif kind == 2:  # anything in the vocabulary
            yield [rng.randrange(vocab) for _ in range(rng.randrange(1, 60))]
        else:  # with special tokens (skipped) in between
            yield [rng.choice(text_ids + special + [rng.randrange(vocab)]) for _ in range(rng.randrange(1, 80))]


def test_incremental_detokenizer_matches_a_full_decode(smol_tokenizers) -> None:
    from covip.sdk.engines._decode import _byte_token_ids

    rng = random.Random(0)
    hf = smol_tokenizers["transformers"]
    assert not any(_byte_token_ids(tok) for tok in smol_tokenizers.values())  # byte-level BPE: no <0xNN> pieces
    for ids in _random_ids(rng, hf, 600):
        for name, tok in smol_tokenizers.items():
            assert pieces(Detokenizer, tok, ids) == pieces(FullDecode, tok, ids), (name, ids)


def test_split_characters_wait_for_their_last_byte(smol_tokenizers) -> None:
    tok = smol_tokenizers["onnx"]
    text = "한국어 😀 텍스트"
    ids = tok.encode(text, add_special_tokens=False)
    assert len(ids) > len(text.split()) + 2  # some characters take several byte-level tokens
    d = Detokenizer(tok)
    out = [d.push(t) for t in ids]
    assert all("\ufffd" not in p for p in out)  # never half a character
    assert "".join(out) + d.flush() == text
    assert sum(1 for p in out if not p) >= 1  # a token ending inside a character returned nothing yet


def test_the_window_stays_short(smol_tokenizers) -> None:
    """Each push decodes a few tokens, however long the answer: O(1) per token, not O(n)."""
    tok = Counting(smol_tokenizers["onnx"])
    ids = smol_tokenizers["onnx"].encode(" ".join(TEXTS) * 20, add_special_tokens=False)
    assert len(ids) > 1500
    d = Detokenizer(tok)
    text = "".join(d.push(t) for t in ids) + d.flush()
    assert text == smol_tokenizers["onnx"].decode(ids)
    assert tok.decoded < 12 * len(ids)  # a full decode per token would be len(ids)**2 / 2


# ----------------------------------------------------------------------------- SentencePiece-style decoders


def _sentencepiece_tokenizer(tmp_path, style: str):
    """A small BPE with byte fallback and a SentencePiece decoder: Llama's (Replace, ByteFallback, Fuse, Strip)
    or Metaspace's; pieces that end in a space and cleanup patterns (`` n't``, `` .``) to reach every rule."""
    pytest.importorskip("tokenizers")
    from tokenizers import AddedToken, Tokenizer, decoders, models

    from covip.sdk.engines._onnx_util import TokenizerAdapter

    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2}
    for b in range(256):
        vocab[f"<0x{b:02X}>"] = len(vocab)
    for p in ["a▁", "'▁", "n'", "'t", "ve", "re", "m", "'v", "▁'r", "▁", "a", "b", "n", "'", "t", "s", ".", ",", "?",
              "▁a", "▁b", "▁n", "n't", "▁'", "'s", "▁.", "▁,", "ab", "▁ab", "▁▁", "안", "▁안"]:
        vocab.setdefault(p, len(vocab))
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>", byte_fallback=True))
    if style == "llama":
        tok.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(),
                                         decoders.Strip(" ", 1, 0)])
    else:
        tok.decoder = decoders.Sequence([decoders.ByteFallback(),
                                         decoders.Metaspace(replacement="▁", prepend_scheme="first")])
    tok.add_special_tokens([AddedToken("<s>", special=True), AddedToken("</s>", special=True)])
    tok.add_tokens([AddedToken("<tool>", special=False)])
    path = tmp_path / f"{style}-tokenizer.json"
    tok.save(str(path))
    wrapped = [TokenizerAdapter(path), TokenizerAdapter(path, clean_up_spaces=True)]
    try:
        from transformers import PreTrainedTokenizerFast
    except ImportError:  # the SDK alone: covip's own adapter only
        return tok, wrapped
    return tok, wrapped + [PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", bos_token="<s>",
                                                   eos_token="</s>")]


@pytest.mark.parametrize("style", ["llama", "metaspace"])
def test_sentencepiece_decoders_match_a_full_decode(tmp_path, style) -> None:
    from covip.sdk.engines._decode import _byte_token_ids

    raw, adapters = _sentencepiece_tokenizer(tmp_path, style)
    assert all(len(_byte_token_ids(tok)) == 256 for tok in adapters)  # the byte-fallback pieces are known
    rng = random.Random(1)
    vocab = raw.get_vocab_size(with_added_tokens=True)
    byte_ids = [raw.token_to_id(f"<0x{b:02X}>") for b in "안녕😀é".encode()]
    words = [raw.token_to_id(p) for p in ["a▁", "'▁", "n'", "'t", "ve", "m", "'v", "▁'r", "▁", "a", "n", "'", "t",
                                          ".", "▁n", "n't", "▁'", "'s", "▁.", "ab", "▁ab", "▁▁", "<s>", "<tool>"]]
    for trial in range(3000):
        if trial % 2:  # byte runs: characters split over byte tokens, some never completed
            ids = [rng.choice(byte_ids) if rng.random() < 0.5 else rng.randrange(vocab)
                   for _ in range(rng.randrange(1, 40))]
        else:  # spaces, apostrophes and punctuation: what clean_up_tokenization rewrites across tokens
            ids = [rng.choice(words) for _ in range(rng.randrange(1, 25))]
        for tok in adapters:
            assert pieces(Detokenizer, tok, ids) == pieces(FullDecode, tok, ids), (
                type(tok).__name__, getattr(tok, "clean_up_spaces", None), [raw.id_to_token(i) for i in ids])


# ----------------------------------------------------------------------------- stop strings


def _stop_reference(parts: list[str], stops: list[str]) -> tuple[str, bool]:
    """The text cut at the first stop string the stream completes (a longer one that began earlier but is not
    complete yet loses), at its earliest place; or all of it."""
    text = ""
    for part in parts:
        text += part
        hits = [text.find(s) for s in stops if s and s in text]
        if hits:
            return text[: min(hits)], True
    return text, False


def test_stop_filter_cuts_at_the_first_stop_however_the_text_is_split() -> None:
    rng = random.Random(2)
    for trial in range(20000):
        alphabet = "ab c" if trial % 2 else "aab\n"
        stops = ["".join(rng.choice(alphabet) for _ in range(rng.randrange(0, 5))) for _ in range(rng.randrange(0, 4))]
        parts = ["".join(rng.choice(alphabet) for _ in range(rng.randrange(0, 4))) for _ in range(rng.randrange(0, 12))]
        f, out = StopFilter(stops), []
        for p in parts:
            out.append(f.feed(p))
            shown = "".join(out)
            assert "".join(parts).startswith(shown)
            if f.stopped:
                break
        else:
            out.append(f.flush())
        want, stopped = _stop_reference(parts, stops)  # what was shown only grew: no stop string ever showed
        assert "".join(out) == want == f.text and f.stopped == stopped


def test_stop_strings_spanning_tokens_and_split_characters(smol_tokenizers) -> None:
    tok = smol_tokenizers["onnx"]
    text = "Hello world, 안녕하세요 😀 friends of the sea. The end."
    ids = tok.encode(text, add_special_tokens=False)
    bounds = {len(tok.decode(ids[:k])) for k in range(len(ids) + 1) if "\ufffd" not in tok.decode(ids[:k])}
    for stop in ("lo wor", "d, 안녕", "요 😀 fr", "😀", "sea. The", "end.", "nowhere"):
        at = text.find(stop)
        if at >= 0:  # each one crosses a token boundary (or is a character split over several tokens)
            assert any(at < b < at + len(stop) for b in bounds) or stop == "😀", stop
        detok, stops, shown = Detokenizer(tok), StopFilter([stop]), []
        for t in ids:
            piece = stops.feed(detok.push(t))
            shown.append(piece)
            assert stop not in "".join(shown)
            if stops.stopped:
                break
        else:
            shown.append(stops.feed(detok.flush()) + stops.flush())
        want, stopped = _stop_reference([text], [stop])
        assert "".join(shown) == want == stops.text and stops.stopped == stopped, stop


def test_a_stop_string_still_cuts_when_it_ends_in_a_later_piece() -> None:
    f = StopFilter(["<|end|>", "###"])
    shown = [f.feed(p) for p in ("Hello <|", "en", "d|> never shown")]
    assert shown == ["Hello ", "", ""] and f.stopped and f.text == "Hello "
    f = StopFilter(["###"])
    assert [f.feed("a#"), f.feed("#b"), f.flush()] == ["a", "##b", ""] and not f.stopped

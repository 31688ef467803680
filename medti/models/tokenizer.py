"""A CLIP-style byte-level BPE tokenizer that medti builds itself, offline and deterministically.

It is saved as ``vocab.json`` + ``merges.txt`` and loaded by transformers' ``CLIPTokenizer``, exactly like
the tokenizer of a real Stable Diffusion checkpoint: lower-cased words, byte-level symbols, ``</w>`` marking
a word's end, ``<|startoftext|>``/``<|endoftext|>`` around a 77-token context. The merges are learned
from a small corpus of radiology and pathology wording, so prompts tokenise into few tokens as they
would with CLIP's real vocabulary.
"""

from __future__ import annotations

import collections
import json
import re
from functools import lru_cache
from pathlib import Path

BOS, EOS = "<|startoftext|>", "<|endoftext|>"

_CORPUS = """
a an the of in on with without and or showing shows show image images photo picture scan scans slice view
chest x-ray xray radiograph radiography frontal lateral lung lungs heart rib ribs opacity opacities focal
consolidation pneumonia normal healthy disease diseased abnormal finding findings lesion lesions nodule
mass effusion cardiomegaly atelectasis pneumothorax edema infiltrate
prostate mri magnetic resonance axial t2 t2w weighted adc dwi diffusion high b-value highb cspca
clinically significant cancer carcinoma tumour tumor present absent no gleason pirads pi-rads zone
peripheral transition gland
histopathology histology pathology patch tissue slide microscopy h&e stained stain hematoxylin eosin
nuclei nucleus cell cells crowded atypical atypia benign malignant metastasis lymph node
breast ultrasound sonography mammogram mammography skin retina fundus dermoscopy ct computed tomography
brain head abdomen liver kidney bone knee spine colon polyp
medical clinical patient study series grey gray scale colour color bright dark round ring disc circle
small large left right upper lower middle centre center high low quality detailed realistic
one two three 1 2 3 4 5 6 7 8 9 0
"""


@lru_cache(maxsize=1)
def bytes_to_unicode() -> dict[int, str]:
    """GPT-2/CLIP's reversible map from bytes to printable unicode characters."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))


_WORD_RE = re.compile(r"'s|'t|'re|'ve|'m|'ll|'d|[^\W\d_]+|\d|[^\s\w]+", re.UNICODE)


def _words(text: str) -> list[tuple[str, ...]]:
    enc = bytes_to_unicode()
    out = []
    for w in _WORD_RE.findall(text.lower()):
        symbols = [enc[b] for b in w.encode("utf-8")]
        symbols[-1] = symbols[-1] + "</w>"
        out.append(tuple(symbols))
    return out


def learn_merges(corpus: str, max_merges: int) -> list[tuple[str, str]]:
    """Plain BPE: repeatedly merge the most frequent adjacent pair (ties broken by the pair itself)."""
    freqs = collections.Counter(_words(corpus))
    merges: list[tuple[str, str]] = []
    while len(merges) < max_merges:
        pairs: collections.Counter = collections.Counter()
        for word, f in freqs.items():
            for a, b in zip(word, word[1:]):
                pairs[(a, b)] += f
        if not pairs:
            break
        best = max(pairs.items(), key=lambda kv: (kv[1], kv[0]))[0]
        merges.append(best)
        new = collections.Counter()
        for word, f in freqs.items():
            i, w = 0, []
            while i < len(word):
                if i < len(word) - 1 and (word[i], word[i + 1]) == best:
                    w.append(word[i] + word[i + 1])
                    i += 2
                else:
                    w.append(word[i])
                    i += 1
            new[tuple(w)] += f
        freqs = new
    return merges


def build_vocab(extra_corpus: str = "", max_merges: int = 2000, vocab_size: int | None = None):
    """Return (vocab, merges). ``vocab_size`` pads with unused entries to match a real model's matrix size."""
    symbols = list(bytes_to_unicode().values())
    vocab_list = symbols + [s + "</w>" for s in symbols]
    merges = learn_merges(_CORPUS + "\n" + extra_corpus, max_merges)
    vocab_list += ["".join(m) for m in merges]
    seen = set()
    vocab_list = [t for t in vocab_list if not (t in seen or seen.add(t))]
    vocab_list += [BOS, EOS]
    if vocab_size is not None:
        if vocab_size < len(vocab_list):
            raise ValueError(f"vocab_size {vocab_size} is smaller than the learned vocabulary ({len(vocab_list)})")
        # Entries no merge produces: they only size the embedding matrix like CLIP's 49,408 rows.
        vocab_list[-2:-2] = [f"<|unused{i}|>" for i in range(vocab_size - len(vocab_list))]
    vocab = {t: i for i, t in enumerate(vocab_list)}
    return vocab, merges


def save_tokenizer(folder: str | Path, extra_corpus: str = "", max_merges: int = 2000,
                   vocab_size: int | None = None, model_max_length: int = 77) -> int:
    """Write a CLIPTokenizer-loadable folder; return the vocabulary size."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    vocab, merges = build_vocab(extra_corpus, max_merges, vocab_size)
    (folder / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    (folder / "merges.txt").write_text(
        "#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges), encoding="utf-8"
    )
    cfg = {
        "tokenizer_class": "CLIPTokenizer",
        "model_max_length": model_max_length,
        "bos_token": BOS,
        "eos_token": EOS,
        "unk_token": EOS,
        "pad_token": EOS,
        "do_lower_case": True,
        "clean_up_tokenization_spaces": True,
    }
    (folder / "tokenizer_config.json").write_text(json.dumps(cfg, indent=2), encoding="utf-8")
    (folder / "special_tokens_map.json").write_text(
        json.dumps({"bos_token": BOS, "eos_token": EOS, "unk_token": EOS, "pad_token": EOS}, indent=2),
        encoding="utf-8",
    )
    return len(vocab)

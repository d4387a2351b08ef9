"""Tokenizers behind one interface: char, gpt2 (tiktoken) and bpe (trained with HF `tokenizers`, encoded by tiktoken).

Every tokenizer has a fingerprint: a stable hash of its kind, vocabulary, merges and special tokens. A dataset
directory and a run directory both record it, so a train/inference tokenizer mismatch is caught, never silent.

Saved layout (a directory): `slmkit-tokenizer.json` (kind, fingerprint, specials, and the char vocabulary) and,
for bpe, `tokenizer.json` in Hugging Face format (also loadable by `transformers.PreTrainedTokenizerFast`).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable, Sequence
from functools import cached_property
from pathlib import Path

from slmkit.base.atomic import atomic_write_json, atomic_write_text
from slmkit.base.errors import SlmError

EOT = "<|endoftext|>"
SYSTEM, USER, ASSISTANT, END_OF_TURN = "<|system|>", "<|user|>", "<|assistant|>", "<|end|>"
CHAT_TOKENS = (SYSTEM, USER, ASSISTANT, END_OF_TURN)
FIM_PREFIX, FIM_SUFFIX, FIM_MIDDLE = "<|fim_prefix|>", "<|fim_suffix|>", "<|fim_middle|>"
FIM_TOKENS = (FIM_PREFIX, FIM_SUFFIX, FIM_MIDDLE)
"""Fill-in-the-middle sentinels (Bavarian et al. 2022); a middle ends with end-of-text (`slmkit.data.fim`)."""
META_FILE = "slmkit-tokenizer.json"
HF_FILE = "tokenizer.json"
# The GPT-2 pre-tokenization regex; HF's ByteLevel pre-tokenizer uses the same one.
GPT2_PATTERN = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""


class TokenizerError(SlmError, ValueError):
    """A tokenizer cannot be built, loaded, or does not match what was asked for."""


class Tokenizer:
    """Common interface. Subclasses set `kind`, `special_tokens` and implement the encode/decode primitives."""

    kind: str
    special_tokens: dict[str, int]

    # -- to implement ---------------------------------------------------------------------------------------
    def encode(self, text: str, allow_special: bool = False) -> list[int]:
        """Token ids of `text`. Special-token strings in `text` are plain text unless allow_special."""
        raise NotImplementedError

    def decode(self, ids: Sequence[int]) -> str:
        raise NotImplementedError

    @property
    def vocab_size(self) -> int:
        raise NotImplementedError

    def _fingerprint_payload(self) -> dict:
        raise NotImplementedError

    def _save_files(self, out: Path) -> dict:
        """Write kind-specific files into `out`; return extra fields for the meta file."""
        return {}

    # -- shared ---------------------------------------------------------------------------------------------
    def encode_batch(self, texts: Sequence[str], num_threads: int = 1) -> list[list[int]]:
        return [self.encode(t) for t in texts]

    @property
    def eot_id(self) -> int:
        return self.special_tokens[EOT]

    def token_id(self, token: str) -> int | None:
        """Id of a special token, or None when this tokenizer does not have it."""
        return self.special_tokens.get(token)

    chat_template: str | None = None
    """An imported model's own chat template (Jinja, as in its tokenizer_config.json), used by `slm chat` and the
    server instead of the `slm` template; saved with the tokenizer, not part of its fingerprint."""
    chat_stops: tuple[str, ...] = ()
    """The special tokens that end a reply under `chat_template` (the model's eos, e.g. <|im_end|>)."""
    chat_bos: str = ""
    """The model's bos token text, which some templates write (`{{ bos_token }}`)."""

    @property
    def has_chat_tokens(self) -> bool:
        return all(t in self.special_tokens for t in CHAT_TOKENS)

    @property
    def has_fim_tokens(self) -> bool:
        return all(t in self.special_tokens for t in FIM_TOKENS)

    @cached_property
    def fingerprint(self) -> str:
        payload = {"kind": self.kind, "specials": sorted(self.special_tokens.items()), **self._fingerprint_payload()}
        blob = json.dumps(payload, sort_keys=True, ensure_ascii=True).encode()
        return hashlib.sha256(blob).hexdigest()[:16]

    @property
    def name(self) -> str:
        return self.kind if self.kind != "bpe" else f"bpe:{self.vocab_size}"

    def save(self, out: str | Path) -> Path:
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        extra = self._save_files(out)
        meta = {"kind": self.kind, "fingerprint": self.fingerprint, "vocab_size": self.vocab_size,
                "special_tokens": self.special_tokens, **extra}  # fmt: skip
        if self.chat_template:
            meta.update(chat_template=self.chat_template, chat_stops=list(self.chat_stops), chat_bos=self.chat_bos)
        atomic_write_json(out / META_FILE, meta)
        return out

    def info(self) -> dict:
        return {"kind": self.kind, "name": self.name, "vocab_size": self.vocab_size, "fingerprint": self.fingerprint,
                "special_tokens": self.special_tokens}  # fmt: skip

    def __repr__(self) -> str:
        return f"<Tokenizer {self.name} vocab={self.vocab_size} fp={self.fingerprint}>"


# ---------------------------------------------------------------------------------------------------------
class CharTokenizer(Tokenizer):
    """One token per Unicode character seen in the corpus, plus end-of-text."""

    kind = "char"

    def __init__(self, chars: Iterable[str]):
        self.chars = sorted(set(chars) - {""})
        self.stoi = {c: i for i, c in enumerate(self.chars)}
        self.special_tokens = {EOT: len(self.chars)}
        self.itos = {i: c for c, i in self.stoi.items()} | {i: t for t, i in self.special_tokens.items()}

    @classmethod
    def from_texts(cls, texts: Iterable[str]) -> CharTokenizer:
        chars: set[str] = set()
        for t in texts:
            chars.update(t)
        if not chars:
            raise TokenizerError("cannot build a char tokenizer from an empty corpus")
        return cls(chars)

    def encode(self, text: str, allow_special: bool = False) -> list[int]:
        try:
            return [self.stoi[c] for c in text]
        except KeyError as e:
            raise TokenizerError(
                f"character {e.args[0]!r} is not in this char tokenizer's vocabulary (built from its corpus); "
                "use a bpe or gpt2 tokenizer for open text"
            ) from None

    def decode(self, ids: Sequence[int]) -> str:
        return "".join(self.itos.get(int(i), "\ufffd") for i in ids)

    @property
    def vocab_size(self) -> int:
        return len(self.chars) + len(self.special_tokens)

    def add_special_tokens(self, tokens: Sequence[str]) -> None:
        """Append special tokens (e.g. the chat tokens for fine-tuning) after the current vocabulary."""
        for t in tokens:
            if t not in self.special_tokens:
                self.special_tokens[t] = self.vocab_size
                self.itos[self.special_tokens[t]] = t
        self.__dict__.pop("fingerprint", None)

    def _fingerprint_payload(self) -> dict:
        return {"chars": self.chars}

    def _save_files(self, out: Path) -> dict:
        return {"chars": "".join(self.chars)}


# ---------------------------------------------------------------------------------------------------------
class TiktokenTokenizer(Tokenizer):
    """Byte-level BPE encoded by tiktoken: GPT-2's own ranks (kind gpt2) or ranks trained here (kind bpe)."""

    def __init__(self, kind: str, encoding, hf_json: str | None = None):
        self.kind = kind
        self.enc = encoding
        self.hf_json = hf_json  # the HF tokenizer.json text (bpe only)
        self.special_tokens = dict(encoding._special_tokens)

    def encode(self, text: str, allow_special: bool = False) -> list[int]:
        if allow_special:
            return self.enc.encode(text, allowed_special="all")
        return self.enc.encode_ordinary(text)

    def encode_batch(self, texts: Sequence[str], num_threads: int = 1) -> list[list[int]]:
        return self.enc.encode_ordinary_batch(list(texts), num_threads=max(1, num_threads))

    def decode(self, ids: Sequence[int]) -> str:
        return self.enc.decode([int(i) for i in ids], errors="replace")

    @property
    def vocab_size(self) -> int:
        return self.enc.n_vocab

    def add_special_tokens(self, tokens: Sequence[str]) -> None:
        """Append special tokens after the vocabulary (used to give gpt2 the chat tokens)."""
        import tiktoken

        specials = dict(self.special_tokens)
        for t in tokens:
            if t not in specials:
                specials[t] = max(self.enc.max_token_value, *specials.values()) + 1
        self.enc = tiktoken.Encoding(self.enc.name + "+chat", pat_str=self.enc._pat_str,
                                     mergeable_ranks=self.enc._mergeable_ranks, special_tokens=specials)  # fmt: skip
        self.special_tokens = specials
        self.__dict__.pop("fingerprint", None)

    def _fingerprint_payload(self) -> dict:
        h = hashlib.sha256()
        for token, rank in sorted(self.enc._mergeable_ranks.items(), key=lambda kv: kv[1]):
            h.update(rank.to_bytes(4, "little") + len(token).to_bytes(2, "little") + token)
        return {"ranks": h.hexdigest(), "pattern": self.enc._pat_str}

    def _save_files(self, out: Path) -> dict:
        if self.hf_json is not None:
            atomic_write_text(out / HF_FILE, self.hf_json)
        return {"base": self.enc.name} if self.kind == "gpt2" else {}


def _gpt2() -> TiktokenTokenizer:
    import tiktoken

    try:
        enc = tiktoken.get_encoding("gpt2")
    except Exception as e:  # network or cache failure
        raise TokenizerError(
            f"could not load tiktoken's gpt2 encoding ({type(e).__name__}: {e}); offline, set TIKTOKEN_CACHE_DIR "
            "to a folder holding its files (e.g. $SLM_DATA_DIR/tiktoken_cache)"
        ) from None
    return TiktokenTokenizer("gpt2", enc)


def _default_tiktoken_cache() -> None:
    """Point tiktoken at $SLM_DATA_DIR/tiktoken_cache when the user has not chosen a cache."""
    data_dir = os.environ.get("SLM_DATA_DIR")
    if data_dir and "TIKTOKEN_CACHE_DIR" not in os.environ and "DATA_GYM_CACHE_DIR" not in os.environ:
        cache = Path(data_dir) / "tiktoken_cache"
        if cache.is_dir():
            os.environ["TIKTOKEN_CACHE_DIR"] = str(cache)


# ---------------------------------------------------------------------------------------------------------
# Byte-level BPE: trained with HF tokenizers, exported to tiktoken ranks.


def byte_to_unicode() -> dict[int, str]:
    """GPT-2's reversible map from bytes to printable characters (what HF ByteLevel token strings use)."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
    printable += list(range(ord("®"), ord("ÿ") + 1))
    mapping, extra = {}, 0
    for b in range(256):
        if b in printable:
            mapping[b] = chr(b)
        else:
            mapping[b] = chr(256 + extra)
            extra += 1
    return mapping


def _tiktoken_from_hf(hf_json: str, name: str):
    import tiktoken

    spec = json.loads(hf_json)
    decoder = {c: b for b, c in byte_to_unicode().items()}
    specials = {t["content"]: t["id"] for t in spec.get("added_tokens", []) if t.get("special")}
    ranks = {bytes(decoder[c] for c in tok): i for tok, i in spec["model"]["vocab"].items() if tok not in specials}
    return tiktoken.Encoding(name, pat_str=GPT2_PATTERN, mergeable_ranks=ranks, special_tokens=specials)


def bpe_from_hf_json(hf_json: str) -> TiktokenTokenizer:
    n = len(json.loads(hf_json)["model"]["vocab"])
    return TiktokenTokenizer("bpe", _tiktoken_from_hf(hf_json, f"slmkit-bpe-{n}"), hf_json=hf_json)


def train_bpe(texts: Iterable[str], vocab_size: int) -> TiktokenTokenizer:
    """Train a byte-level BPE on `texts` with the reserved specials (end-of-text, the chat and the FIM tokens)."""
    from tokenizers import Tokenizer as HFTokenizer
    from tokenizers import decoders, models, pre_tokenizers, trainers

    specials = [EOT, *CHAT_TOKENS, *FIM_TOKENS]
    if vocab_size < 256 + len(specials) + 1:
        raise TokenizerError(f"bpe vocab size must be at least {256 + len(specials) + 1}, got {vocab_size}")
    tok = HFTokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=specials, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())  # fmt: skip
    seen = [0]

    def counted():
        for t in texts:
            seen[0] += len(t)
            yield t

    tok.train_from_iterator(counted(), trainer=trainer)
    if seen[0] == 0:
        raise TokenizerError("cannot train a bpe tokenizer on an empty corpus")
    return bpe_from_hf_json(tok.to_str())


# ---------------------------------------------------------------------------------------------------------
# Building and loading.


def parse_kind(kind: str) -> tuple[str, int]:
    """'bpe:8192' -> ('bpe', 8192); 'char' -> ('char', 0). Raises TokenizerError for unknown kinds."""
    if kind in ("char", "gpt2"):
        return kind, 0
    if kind.startswith("bpe:") and kind[4:].isdigit():
        return "bpe", int(kind[4:])
    raise TokenizerError(f"unknown tokenizer {kind!r}; use char, gpt2, bpe:<vocab size> or a tokenizer directory")


def is_tokenizer_dir(path: str | Path) -> bool:
    return (Path(path) / META_FILE).is_file()


def build_tokenizer(kind: str, texts: Iterable[str] | None = None) -> Tokenizer:
    """Make a tokenizer of `kind`; char and bpe learn from `texts`; a directory path loads a saved one."""
    if is_tokenizer_dir(kind):
        return load_tokenizer(kind)
    base, vocab = parse_kind(kind)
    if base == "gpt2":
        _default_tiktoken_cache()
        return _gpt2()
    if texts is None:
        raise TokenizerError(f"tokenizer {kind} is trained on a corpus; pass its texts")
    return CharTokenizer.from_texts(texts) if base == "char" else train_bpe(texts, vocab)


def load_tokenizer(path: str | Path) -> Tokenizer:
    path = Path(path)
    meta_path = path / META_FILE
    if not meta_path.is_file():
        raise TokenizerError(f"{path} holds no saved tokenizer ({META_FILE} missing)")
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
        kind = meta["kind"]
        if kind == "char":
            tok: Tokenizer = CharTokenizer(meta["chars"])
            tok.add_special_tokens([t for t in meta["special_tokens"] if t != EOT])  # type: ignore[attr-defined]
        elif kind == "gpt2":
            _default_tiktoken_cache()
            tok = _gpt2()
            extra = [t for t in meta["special_tokens"] if t not in tok.special_tokens]
            if extra:
                tok.add_special_tokens(extra)  # type: ignore[attr-defined]
        elif kind == "bpe":
            tok = bpe_from_hf_json((path / HF_FILE).read_text(encoding="utf-8"))
            extra = [t for t in meta["special_tokens"] if t not in tok.special_tokens]
            if extra:  # appended after training (FIM tokens for a bpe trained before they were reserved)
                tok.add_special_tokens(extra)  # type: ignore[attr-defined]
        else:
            raise TokenizerError(f"{meta_path}: unknown tokenizer kind {kind!r}")
        if meta.get("chat_template"):
            tok.chat_template, tok.chat_stops = meta["chat_template"], tuple(meta.get("chat_stops", ()))
            tok.chat_bos = meta.get("chat_bos", "")
    except (KeyError, json.JSONDecodeError, OSError) as e:
        raise TokenizerError(f"{path} holds a damaged tokenizer ({type(e).__name__}: {e}); re-create it") from None
    if tok.fingerprint != meta.get("fingerprint"):
        raise TokenizerError(
            f"tokenizer in {path} does not match its recorded fingerprint "
            f"(recorded {meta.get('fingerprint')}, loaded {tok.fingerprint}); its files were changed or damaged"
        )
    return tok


def check_fingerprint(expected: str, actual: str, what: str) -> None:
    if expected != actual:
        raise TokenizerError(
            f"tokenizer mismatch for {what}: it was made with tokenizer {expected}, but the one given is {actual}. "
            "Use the same tokenizer (or re-prepare the data with this one)."
        )


def bytes_per_token(tok: Tokenizer, texts: Iterable[str]) -> dict:
    """Compression on a sample: UTF-8 bytes per token (higher is better for the same vocabulary size)."""
    n_bytes = n_tokens = 0
    for t in texts:
        n_bytes += len(t.encode("utf-8"))
        n_tokens += len(tok.encode(t))
    return {"tokenizer": tok.name, "bytes": n_bytes, "tokens": n_tokens,
            "bytes_per_token": n_bytes / max(1, n_tokens)}  # fmt: skip

"""Our tokenizers as Hugging Face fast tokenizers, and HF tokenizer.json files as ours.

To HF (what `slm export --format hf` and the GGUF vocabulary use):
  - bpe: the tokenizer.json it was trained as;
  - gpt2: rebuilt from tiktoken's ranks (each merge recovered by running BPE on the token below its own rank);
  - char: a WordLevel model over single characters (a Split pre-tokenizer isolating every character, a Fuse
    decoder); characters outside the vocabulary become end-of-text, where our char tokenizer raises instead.
From HF: byte-level BPE with GPT-2's pre-tokenizer (`tokenizer_from_hf_dir`), which is gpt2 itself when its ranks
are GPT-2's.

tokenizer_config.json is written by us (`hf_tokenizer_config`), not by the installed transformers' save_pretrained:
transformers 5 names its own class (`TokenizersBackend`), which 4.x cannot load; `PreTrainedTokenizerFast` is
read by both majors. A tokenizer with the chat tokens also gets `CHAT_TEMPLATE`, the one Jinja form of the `slm`
chat format that both exports (hf, gguf) write.
"""

from __future__ import annotations

import json
from pathlib import Path

from tokenizers import AddedToken, Regex, decoders, models, pre_tokenizers
from tokenizers import Tokenizer as HFTokenizer

from slmkit.base.errors import SlmError
from slmkit.base.tokenizer import (
    ASSISTANT,
    END_OF_TURN,
    EOT,
    Tokenizer,
    bpe_from_hf_json,
    build_tokenizer,
    byte_to_unicode,
)

HF_TOKENIZER_CLASS = "PreTrainedTokenizerFast"
"""The tokenizer_class written to tokenizer_config.json: a class transformers 4.x and 5.x both resolve."""
CHAT_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}" + END_OF_TURN + "{% endfor %}"
    "{% if add_generation_prompt %}" + ASSISTANT + "{% endif %}"
)
"""The `slm` chat template (`slmkit.data.chat.render`: end-of-text, then `<|role|>content<|end|>` per turn, then
`<|assistant|>` for a generation prompt) in Jinja, for transformers' apply_chat_template and llama.cpp."""


def _merges_from_ranks(ranks: dict[bytes, int]) -> list[tuple[bytes, bytes]]:
    """The ordered merge list that tiktoken's ranks encode: each multi-byte token is the merge of the two parts
    BPE reaches when only merges ranked below the token are allowed."""
    merges = []
    for token, _ in sorted(ranks.items(), key=lambda kv: kv[1]):
        if len(token) < 2:
            continue
        parts = [bytes([b]) for b in token]
        while len(parts) > 2:
            best = min(range(len(parts) - 1), key=lambda i: ranks.get(parts[i] + parts[i + 1], 1 << 62))
            parts[best : best + 2] = [parts[best] + parts[best + 1]]
        merges.append((parts[0], parts[1]))
    return merges


def _tiktoken_to_hf(tokenizer) -> str:
    """tokenizer.json text of a byte-level BPE equivalent to a tiktoken encoding (GPT-2's pattern)."""
    b2u = byte_to_unicode()

    def s(b: bytes) -> str:
        return "".join(b2u[x] for x in b)

    ranks = tokenizer.enc._mergeable_ranks
    vocab = {s(tok): rank for tok, rank in ranks.items()}
    merges = [(s(a), s(b)) for a, b in _merges_from_ranks(ranks)]
    tk = HFTokenizer(models.BPE(vocab=vocab, merges=merges))
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tk.decoder = decoders.ByteLevel()
    _add_specials(tk, tokenizer.special_tokens)
    return tk.to_str()


def _char_to_hf(tokenizer) -> str:
    vocab = dict(tokenizer.stoi)
    tk = HFTokenizer(models.WordLevel(vocab={**vocab, EOT: tokenizer.special_tokens[EOT]}, unk_token=EOT))
    tk.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    tk.decoder = decoders.Fuse()
    _add_specials(tk, tokenizer.special_tokens)
    return tk.to_str()


def _add_specials(tk, specials: dict[str, int]) -> None:
    for text, i in sorted(specials.items(), key=lambda kv: kv[1]):
        tk.add_special_tokens([AddedToken(text, special=True, normalized=False)])
        if tk.token_to_id(text) != i:
            raise SlmError(f"special token {text!r} would get id {tk.token_to_id(text)} in the HF tokenizer, not {i}")


def hf_tokenizer_json(tokenizer: Tokenizer) -> str:
    """The tokenizer.json text of a Hugging Face fast tokenizer that encodes text as `tokenizer` does."""
    if tokenizer.kind == "bpe":
        return tokenizer.hf_json
    if tokenizer.kind == "gpt2":
        return _tiktoken_to_hf(tokenizer)
    return _char_to_hf(tokenizer)


def hf_tokenizer_config(tokenizer: Tokenizer, model_max_length: int) -> dict:
    """tokenizer_config.json for `hf_tokenizer_json(tokenizer)`: end-of-text as eos and bos (and unk for char), the
    chat template when the tokenizer has the chat tokens; loadable by transformers 4.x and 5.x."""
    config = {
        "tokenizer_class": HF_TOKENIZER_CLASS,
        "bos_token": EOT,
        "eos_token": EOT,
        "unk_token": EOT if tokenizer.kind == "char" else None,
        "model_max_length": model_max_length,
        "clean_up_tokenization_spaces": False,
    }
    if tokenizer.chat_template:  # an imported model's own template travels with it
        config["chat_template"] = tokenizer.chat_template
    elif tokenizer.has_chat_tokens:
        config["chat_template"] = CHAT_TEMPLATE
    return config


def save_hf_tokenizer(tokenizer: Tokenizer, model_max_length: int, out: Path) -> None:
    """Write tokenizer.json and tokenizer_config.json of `tokenizer` into the directory `out`."""
    (out / "tokenizer.json").write_text(hf_tokenizer_json(tokenizer), encoding="utf-8")
    config = hf_tokenizer_config(tokenizer, model_max_length)
    (out / "tokenizer_config.json").write_text(
        json.dumps(config, indent=2, ensure_ascii=False) + "\n", encoding="utf-8"
    )


def hf_tokenizer(tokenizer: Tokenizer, model_max_length: int):
    """A transformers PreTrainedTokenizerFast that encodes text as `tokenizer` does, configured as
    `hf_tokenizer_config` says (end-of-text as eos and bos, the chat template when there are chat tokens)."""
    from transformers import PreTrainedTokenizerFast  # optional and slow to import

    config = {k: v for k, v in hf_tokenizer_config(tokenizer, model_max_length).items() if k != "tokenizer_class"}
    return PreTrainedTokenizerFast(tokenizer_object=HFTokenizer.from_str(hf_tokenizer_json(tokenizer)), **config)


def tokenizer_from_hf_dir(src: Path) -> Tokenizer:
    """Our tokenizer for an HF tokenizer.json (byte-level BPE with GPT-2's pre-tokenizer); gpt2 itself if it is."""
    path = src / "tokenizer.json"
    if not path.is_file():
        raise SlmError(f"{src} has no tokenizer.json; save the model's fast tokenizer there (save_pretrained)")
    text = path.read_text(encoding="utf-8")
    spec = json.loads(text)
    pre = spec.get("pre_tokenizer") or {}
    if spec.get("model", {}).get("type") != "BPE" or pre.get("type") != "ByteLevel":
        raise SlmError(
            f"{path}: only byte-level BPE tokenizers with GPT-2's pre-tokenizer can be imported "
            f"(found model {spec.get('model', {}).get('type')}, pre-tokenizer {pre.get('type')})"
        )
    if not any(t["content"] == EOT for t in spec.get("added_tokens", [])):
        raise SlmError(f"{path} has no {EOT} special token; slmkit needs it as end-of-text")
    tok = bpe_from_hf_json(text)
    try:
        gpt2 = build_tokenizer("gpt2")
        if gpt2.enc._mergeable_ranks == tok.enc._mergeable_ranks and gpt2.special_tokens == tok.special_tokens:
            tok = gpt2
    except SlmError:
        pass
    tok.chat_template, tok.chat_stops, tok.chat_bos = hf_chat_template(src, tok)
    return tok


def hf_chat_template(src: Path, tok: Tokenizer) -> tuple[str | None, tuple[str, ...], str]:
    """(the model's own chat template, the special tokens that end a reply, the bos text) from an HF directory: the
    template of tokenizer_config.json (or chat_template.jinja, where transformers 5.x writes it), and its eos token
    when that is one of the tokenizer's specials. (None, (), "") without a template, or for the `slm` template."""
    config_path = src / "tokenizer_config.json"
    config = json.loads(config_path.read_text(encoding="utf-8")) if config_path.is_file() else {}
    template = config.get("chat_template")
    if isinstance(template, list):  # named templates: the default one
        template = next((t.get("template") for t in template if t.get("name") == "default"), None)
    if not template and (src / "chat_template.jinja").is_file():
        template = (src / "chat_template.jinja").read_text(encoding="utf-8")
    if not template or template == CHAT_TEMPLATE:
        return None, (), ""
    eos, bos = (t.get("content") if isinstance(t, dict) else t for t in (config.get("eos_token"),
                                                                         config.get("bos_token")))  # fmt: skip
    return template, tuple(t for t in (eos,) if t and t in tok.special_tokens), bos or ""

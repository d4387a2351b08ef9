"""`slm export --format sentence-transformers`: a directory `SentenceTransformer(DIR)` loads offline and that gives
the vectors `slm embed` gives (cosine >= 0.9999, tests/test_embed_export.py).

The layout is sentence-transformers' own: the Hugging Face export (`export_hf`: config, weights, tokenizer) at the
top as module 0 (`Transformer`, loaded with AutoModel: the decoder without its head, whose last hidden state is our
final-norm residual stream), then `1_Pooling` (mean tokens; weightedmean tokens for weighted pooling, the same
position weights 1..n; the last token for last and eos pooling) and `2_Normalize`. Padding is on the right with
end-of-text as the pad token; attention is causal, so padding never changes a text's vector, as in
`slmkit.engine.embedding`. For eos pooling the tokenizer's post-processor appends end-of-text to every text. The
run's embed.instruction becomes the "query" prompt (`model.encode(q, prompt_name="query")`).
"""

from __future__ import annotations

import json
from pathlib import Path

from slmkit.base.tokenizer import EOT, Tokenizer
from slmkit.engine.embedding import check_pooling
from slmkit.ship.export.hf import export_hf

POOLING_DIR, NORMALIZE_DIR = "1_Pooling", "2_Normalize"


def _write_json(path: Path, obj: dict | list) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=2) + "\n", encoding="utf-8")


def _append_eos(out: Path, tokenizer: Tokenizer) -> None:
    """tokenizer.json: end-of-text after every text (a TemplateProcessing post-processor), for eos pooling."""
    path = out / "tokenizer.json"
    spec = json.loads(path.read_text(encoding="utf-8"))
    eot = tokenizer.token_id(EOT)
    spec["post_processor"] = {
        "type": "TemplateProcessing",
        "single": [{"Sequence": {"id": "A", "type_id": 0}}, {"SpecialToken": {"id": EOT, "type_id": 0}}],
        "pair": [
            {"Sequence": {"id": "A", "type_id": 0}},
            {"Sequence": {"id": "B", "type_id": 1}},
            {"SpecialToken": {"id": EOT, "type_id": 1}},
        ],  # fmt: skip
        "special_tokens": {EOT: {"id": EOT, "ids": [eot], "tokens": [EOT]}},
    }
    path.write_text(json.dumps(spec, ensure_ascii=False), encoding="utf-8")


def export_sentence_transformers(model, tokenizer: Tokenizer, cfg, out: Path) -> None:
    """Write a sentence-transformers directory of `model` pooled as cfg.embed says into the empty directory `out`."""
    pooling = cfg.embed.pooling
    check_pooling(pooling, tokenizer)
    export_hf(model, tokenizer, cfg, out)
    config_path = out / "tokenizer_config.json"
    tok_cfg = json.loads(config_path.read_text(encoding="utf-8"))
    tok_cfg.update(pad_token=EOT, padding_side="right", add_bos_token=False, add_eos_token=False)
    _write_json(config_path, tok_cfg)
    if pooling == "eos":
        _append_eos(out, tokenizer)
    _write_json(out / "modules.json", [
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": POOLING_DIR, "type": "sentence_transformers.models.Pooling"},
        {"idx": 2, "name": "2", "path": NORMALIZE_DIR, "type": "sentence_transformers.models.Normalize"},
    ])  # fmt: skip
    _write_json(out / "sentence_bert_config.json", {"max_seq_length": cfg.model.block_size, "do_lower_case": False})
    prompts = {"query": cfg.embed.instruction} if cfg.embed.instruction else {}
    _write_json(out / "config_sentence_transformers.json",
                {"prompts": prompts, "default_prompt_name": None, "similarity_fn_name": "cosine"})  # fmt: skip
    _write_json(out / POOLING_DIR / "config.json", {
        "word_embedding_dimension": cfg.model.n_embd,
        "pooling_mode_cls_token": False,
        "pooling_mode_mean_tokens": pooling == "mean",
        "pooling_mode_max_tokens": False,
        "pooling_mode_mean_sqrt_len_tokens": False,
        "pooling_mode_weightedmean_tokens": pooling == "weighted",
        "pooling_mode_lasttoken": pooling in ("last", "eos"),
        "include_prompt": True,
    })  # fmt: skip
    (out / NORMALIZE_DIR).mkdir(exist_ok=True)

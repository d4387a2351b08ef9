"""Knowledge distillation (Hinton et al. 2015): a student learns from a teacher's next-token distributions.

`distill.teacher = RUN` makes the training objective

    loss = alpha * CE(student, next token) + (1 - alpha) * T^2 * KL(softmax(teacher / T) || softmax(student / T))

over the positions that have a target (IGNORE_INDEX positions, e.g. SFT prompts, are left out of both terms). The
T^2 keeps the KL term's gradients on the scale of the cross-entropy's as T changes. The teacher runs under
no_grad in eval mode, on the fly for every batch (its forward costs about a third of a training step of the same
model), and is not part of the student: not in the optimizer, not in checkpoints. Teacher and student must share
the tokenizer (fingerprints checked); only the tokenizer's real vocabulary rows enter the KL (padded rows differ in
size between models and mean nothing). Validation stays the student's plain cross-entropy, so its val loss compares
with a run trained alone.

With `distill.topk = K` the teacher does not run during training: its K largest logits at every position of the
training split were cached once (`slmkit.engine.teacher_cache`), the loader gives each window's offset, and the KL
is taken over those K tokens (the teacher's distribution renormalised over them, the student's full softmax looked
up at them); the student's step then costs about what it costs alone.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from slmkit.base.config import DistillConfig
from slmkit.base.errors import SlmError
from slmkit.base.tokenizer import Tokenizer
from slmkit.engine.teacher_cache import TeacherCache
from slmkit.model.linear_ce import IGNORE_INDEX, masked_cross_entropy
from slmkit.runs import checkpoint as ckpt_io


class DistillError(SlmError):
    """A teacher that cannot teach this student."""


def load_teacher(cfg: DistillConfig, tokenizer: Tokenizer, device: torch.device | str = "cpu"):
    """The teacher model (eval mode, frozen) of `cfg.teacher`; DistillError when its tokenizer is not the student's."""
    run = ckpt_io.check_run_dir(cfg.teacher)
    model, teacher_tok, _, ckpt = ckpt_io.load_model(run, cfg.checkpoint)
    if teacher_tok.fingerprint != tokenizer.fingerprint:
        raise DistillError(f"distill.teacher={cfg.teacher} has another tokenizer ({teacher_tok.name}, fingerprint "
                           f"{teacher_tok.fingerprint}) than the student ({tokenizer.name}, fingerprint "
                           f"{tokenizer.fingerprint}); train the student with "
                           f"tokenizer.kind={run}/tokenizer")  # fmt: skip
    model.requires_grad_(False)
    return model.to(device).eval(), ckpt


def distill_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, targets: torch.Tensor, vocab: int,
                 temperature: float, alpha: float, teacher_ids: torch.Tensor | None = None,
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:  # fmt: skip
    """(loss, cross-entropy, KL) of (B, T, V*) student logits; the KL is averaged over positions whose target counts.
    The teacher's logits are (B, T, V*), or with `teacher_ids` (B, T, K) its top K logits and their token ids (a
    cache): the KL then runs over those K tokens."""
    ce = masked_cross_entropy(student_logits, targets)
    keep = (targets != IGNORE_INDEX).reshape(-1)
    log_s = F.log_softmax(student_logits[..., :vocab].float().reshape(-1, vocab)[keep] / temperature, -1)
    width = vocab if teacher_ids is None else teacher_ids.shape[-1]
    log_t = F.log_softmax(teacher_logits[..., :width].float().reshape(-1, width)[keep] / temperature, -1)
    if teacher_ids is not None:
        log_s = log_s.gather(1, teacher_ids.reshape(-1, width)[keep])
    if log_s.numel() == 0:
        kl = log_s.sum()  # no position counts: 0 with a zero gradient, like the cross-entropy
    else:
        kl = F.kl_div(log_s, log_t, log_target=True, reduction="batchmean")
    return alpha * ce + (1 - alpha) * temperature**2 * kl, ce, kl


class DistillObjective(nn.Module):
    """`Trainer(objective=...)`: called as objective(model, (x, y)) -> loss. The teacher is kept outside the module's
    registered children, so it never reaches the optimizer, `state_dict` or a checkpoint."""

    def __init__(self, cfg: DistillConfig, teacher: nn.Module | None, vocab: int, cache: TeacherCache | None = None):
        super().__init__()
        self.temperature, self.alpha, self.vocab = cfg.temperature, cfg.alpha, vocab
        self._teacher = [teacher]  # a list: not a registered submodule
        self.cache = cache
        self.wants_positions = cache is not None  # the Trainer's loader then adds each window's offset to a batch
        self._last: dict[str, float] = {}

    @property
    def teacher(self) -> nn.Module | None:
        return self._teacher[0]

    def forward(self, model, batch: tuple[torch.Tensor, ...]) -> torch.Tensor:
        x, y = batch[0], batch[1]
        ids = None
        if self.cache is not None:
            teacher_logits, ids = (t.to(x.device) for t in self.cache.lookup(batch[2].cpu(), x.shape[1]))
        else:
            with torch.no_grad():
                teacher_logits, _ = self.teacher(x)
        student_logits, _ = model(x)
        loss, ce, kl = distill_loss(student_logits, teacher_logits, y, self.vocab, self.temperature, self.alpha, ids)
        self._last = {"train/ce": float(ce.detach()), "train/kl": float(kl.detach())}
        return loss

    def val_objective(self, model, batch: tuple[torch.Tensor, ...]) -> torch.Tensor:
        """Validation: the student's own cross-entropy, comparable with a run trained without a teacher."""
        _, loss = model(batch[0], batch[1])
        return loss

    def metrics(self) -> dict[str, float]:
        """Logged by the Trainer every step: the two terms of the last training batch."""
        return dict(self._last)

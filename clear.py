"""
CleaR: routes each sample through the PEFT modules only as often as it looks clean.

Reference: Kim, Kim, Lee 2024, "CleaR: Towards Robust and Generalized Parameter-Efficient
Fine-Tuning for Noisy Label Learning", ACL. Sec. 4.1 (clean probability from a
two-component Gaussian mixture on per-sample losses, mixture.py), Sec. 4.2 (clean routing:
the PEFT module of layer l is applied to sample i with probability r * w_i), Sec. 4.3
(consistency regularisation against the previous epoch's predictions).

Usage:
    hooks = ClearHooks(num_train, num_layers, ClearConfig(base_rate=0.85, clear_eval="expected"), warmup_epochs=3)
    out = model(batch.input_ids, batch.attention_mask, gates=hooks.gates(batch), with_features=True)  # gates (B, L)
    loss, extra = hooks.loss(out, batch)   # CE + {"consistency": KL to the last epoch}
"""

from dataclasses import dataclass

import torch
import torch.nn.functional as F

import methods
import peft
from settings import SettingError, setting
from hooks import Hooks


CLEAR_EVAL_MODES = ("sample", "all", "expected")


@dataclass
class ClearConfig:
    """CleaR (clear.py, Kim et al. 2024)"""
    base_rate: float = setting(None, "gate probability r of a surely clean sample (default per PEFT kind: "
                                     "adapter 0.7, lora/prefix 0.85, bitfit 0.9, as the official code)")
    consistency_weight: float = setting(1.0, "weight of the KL term to the last epoch's training-set predictions")
    consistency_temp: float = setting(1.0, "temperature of that KL term")
    clear_eval: str = setting(None, "gates at evaluation (test and training-set passes): sample ~ Bernoulli(r) "
                                    "(official code), all on, or their expected value r (default: expected, best "
                                    "measured, docs/earlier-results.md; with --eval_only: the saved run's mode unless given)",
                              choices=CLEAR_EVAL_MODES)
    clear_freeze: bool = setting(False, "ablation: stop training the PEFT modules after warm-up (the head goes on) - "
                                        "what the official LoRA code does by accident (loralib merges on eval())")


class ClearHooks(Hooks):
    """Per-sample state of CleaR: clean probabilities w (from the loss mixture, mixture.py),
    the teacher logits of the last training-set pass, and the Bernoulli(r * w_i) gate draws.

    The training-set pass is the one the engine makes every epoch to measure memorisation
    (eval mode, no dropout, gated as at evaluation), so CleaR's loss pass costs nothing
    extra. Unlike the official code, the model goes back to train mode after that pass,
    and every PEFT kind is gated per sample and per layer."""

    def __init__(self, num_train, num_layers, cfg, warmup_epochs=3, model=None):
        if cfg.base_rate is None or not 0 < cfg.base_rate <= 1:
            raise SettingError(f"CleaR base rate must be in (0, 1], got {cfg.base_rate}")
        if cfg.clear_eval not in CLEAR_EVAL_MODES:
            raise SettingError(f"--clear_eval must be one of {CLEAR_EVAL_MODES}, got {cfg.clear_eval!r}")
        self.cfg, self.num_layers, self.warmup_epochs, self.model = cfg, num_layers, warmup_epochs, model
        if cfg.clear_freeze and model is None:
            raise SettingError("--clear_freeze needs the model to freeze")
        self.clean_prob = torch.ones(num_train)  # w_i; 1 during warm-up, so gates ~ Bernoulli(r)
        self.teacher = None                      # (N, K) logits of the last training-set pass

    def gate_prob(self, index):
        """(B,) probability r * w_i that sample i's PEFT modules are on in any one layer."""
        return self.cfg.base_rate * self.clean_prob[index.cpu()]

    def gates(self, batch):
        index = batch.index
        p = self.gate_prob(index)[:, None].expand(-1, self.num_layers)  # (B, L)
        return torch.bernoulli(p).to(index.device)  # a fresh draw per sample, per layer, per step

    def eval_gates(self, batch_size, device, generator):
        """Gates for an evaluation pass; `generator` is seeded per pass, so evaluation is repeatable."""
        r, L = self.cfg.base_rate, self.num_layers
        if self.cfg.clear_eval == "all":
            return None
        if self.cfg.clear_eval == "expected":
            return torch.full((batch_size, L), r, device=device)
        return torch.bernoulli(torch.full((batch_size, L), r), generator=generator).to(device)

    def constant_eval_gate(self):
        return {"all": 1.0, "expected": self.cfg.base_rate}.get(self.cfg.clear_eval)  # sample: None

    def extra_losses(self, out, batch):
        """KL(softmax(t/T) || softmax(z/T)) against the stored teacher (Sec. 4.3); none before one exists."""
        if self.teacher is None or self.cfg.consistency_weight == 0:
            return {}
        T = self.cfg.consistency_temp
        teacher = F.log_softmax(self.teacher[batch.index.cpu()].to(out.logits.device) / T, dim=-1)
        student = F.log_softmax(out.logits.float() / T, dim=-1)
        kl = F.kl_div(student, teacher, log_target=True, reduction="batchmean")
        return {"consistency": self.cfg.consistency_weight * kl}

    def end_epoch(self, epoch, train_logits, observed, fit):
        """From the end of warm-up on, gate with the detector's clean probabilities (mixture.py)."""
        if epoch + 1 >= self.warmup_epochs:  # epochs count from 0: warm-up covers 0 .. W-1
            self.clean_prob = torch.as_tensor(fit.clean_prob, dtype=torch.float32)
            self.teacher = torch.as_tensor(train_logits).float()
            self.freeze()

    def freeze(self):
        """--clear_freeze: the PEFT modules stop learning (no gradient, so AdamW skips them); the head trains on."""
        if self.cfg.clear_freeze:
            for name, p in self.model.named_parameters():
                if not name.startswith("head."):
                    p.requires_grad_(False)

    def epoch_metrics(self, observed, true):
        """The mean gate rate r * w of truly clean and truly noisy samples (the detector's own
        figures are every method's, evaluation.epoch_metrics)."""
        clean = observed == true
        gate = self.cfg.base_rate * self.clean_prob.numpy()
        return {"gate_rate_clean": float(gate[clean].mean()) if clean.any() else None,
                "gate_rate_noisy": float(gate[~clean].mean()) if (~clean).any() else None}

    def state_dict(self):
        return {"clean_prob": self.clean_prob, "teacher": self.teacher}

    def load_state_dict(self, state):
        self.clean_prob, self.teacher = state["clean_prob"], state["teacher"]
        if self.teacher is not None:  # resumed after warm-up
            self.freeze()


# ----------------------------------------------------------------------------
# the registry entry (methods/__init__.py): --method clear

@methods.register
class ClearMethod(methods.Method):
    name, summary = "clear", "CleaR: each sample goes through the PEFT modules as often as it looks clean"
    settings = ClearConfig

    def can_sit_on(self, kind_class):
        return kind_class.standalone and kind_class.clear_base_rate is not None

    def finalize(self, args):
        if args.base_rate is None:
            args.base_rate = peft.KINDS[self.kind_name(args)].clear_base_rate
        if args.clear_eval is None and not args.eval_only:
            args.clear_eval = "expected"

    def hooks(self, model, args, num_train):
        L = model.encoder.config.num_hidden_layers
        return ClearHooks(num_train, L, self.config(args), warmup_epochs=args.warmup_epochs, model=model)

    def label(self, cfg):
        return f"clear ({cfg['peft']})"

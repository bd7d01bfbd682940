"""Optimisers and learning-rate schedules, stepped per iteration."""

from __future__ import annotations

import math

import torch


def build_optimizer(params, cfg) -> torch.optim.Optimizer:
    """``cfg`` is a config.TrainConfig (or anything with the same fields)."""
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov and cfg.momentum > 0,
                               weight_decay=cfg.weight_decay)
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    raise ValueError(f"unknown optimizer {cfg.optimizer!r}")


def build_scheduler(optimizer: torch.optim.Optimizer, cfg, total_steps: int):
    total_steps = max(1, total_steps)
    if cfg.scheduler == "onecycle":
        # Pointcept's recipe: OneCycleLR(pct_start 0.05, cos anneal, div 10, final_div 1e4).
        return torch.optim.lr_scheduler.OneCycleLR(
            optimizer, max_lr=[g["lr"] for g in optimizer.param_groups], total_steps=total_steps,
            pct_start=cfg.pct_start, anneal_strategy="cos", div_factor=cfg.div_factor,
            final_div_factor=cfg.final_div_factor, cycle_momentum=False)
    if cfg.scheduler == "cosine":
        warm = max(1, int(cfg.pct_start * total_steps))

        def f(step: int) -> float:
            if step < warm:
                return (step + 1) / warm
            t = (step - warm) / max(1, total_steps - warm)
            return 0.5 * (1 + math.cos(math.pi * min(1.0, t)))

        return torch.optim.lr_scheduler.LambdaLR(optimizer, f)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)

"""Linear head + cross-entropy without the logits tensor: the LM loss in chunks of tokens.

An LM's loss projects N hidden states h [N, d] onto the vocabulary W [V, d] and takes the cross-entropy in
fp32. Done plainly, the N × V logits exist in the compute dtype, again in fp32, and once more as their
gradient: at the 1B recipe's shape (16k tokens, V = 32768) that is 2 GB per fp32 copy. Here (the scheme of
Liger-Kernel's fused linear cross-entropy, in plain PyTorch) the forward walks over chunks of `chunk_size`
tokens; per chunk it computes the logits, their fp32 log-sum-exp and loss, and at once the gradient of the
loss with respect to them, softmax(z) − onehot(y), scaled by 1 / normaliser, which it turns into the chunk's
grad_h = g·W and adds into grad_W += gᵀ·h (products in the compute dtype, as `nn.Linear`'s backward; grad_W
summed in fp32). Only grad_h [N, d] and grad_W [V, d] (fp32) are kept for the backward, which scales them by
the incoming gradient (a scalar). The matmuls run in the autocast dtype when autocast is on (as `nn.Linear`
would), the log-sum-exp and softmax in fp32.

- `linear_cross_entropy_naive`: the reference (full logits, `F.cross_entropy` in fp32).
- `linear_cross_entropy_chunked`: the chunked op (an autograd Function), same contract.
- `z_loss`: the z-loss term alone, on given logits (the model's logits path adds it to transformers' loss).

Contract: `targets` [N] with `ignore_index` for tokens without a target; the loss is the sum over the other
tokens divided by `normaliser` (default: their count, i.e. the mean), as transformers' `ForCausalLMLoss`
does with and without `num_items_in_batch`. With `z_loss_weight` w > 0 each targeted token adds w·lse², lse
its logits' log-sum-exp (PaLM's z-loss: it keeps the softmax normaliser near 1, against the logit drift
behind loss spikes); its gradient with respect to the logits is 2w·lse·softmax(z), so the chunked op
forms softmax(z)·(1 + 2w·lse) − onehot(y).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def linear_cross_entropy_naive(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    targets: torch.Tensor,
    ignore_index: int = -100,
    normaliser: torch.Tensor | float | None = None,
    z_loss_weight: float = 0.0,
) -> torch.Tensor:
    """Reference: logits = hidden · Wᵀ, fp32 cross-entropy (plus the z-loss) summed over targeted tokens
    ÷ normaliser."""
    logits = F.linear(hidden, weight).float()
    total = F.cross_entropy(logits, targets, ignore_index=ignore_index, reduction="sum")
    loss = total / _normaliser(targets, ignore_index, normaliser)
    if z_loss_weight:
        loss = loss + z_loss_weight * z_loss(logits, targets, ignore_index, normaliser)
    return loss


def z_loss(
    logits: torch.Tensor,
    targets: torch.Tensor,
    ignore_index: int = -100,
    normaliser: torch.Tensor | float | None = None,
) -> torch.Tensor:
    """Σ lse(logits)² over the targeted tokens ÷ normaliser (fp32); `logits` [N, V], `targets` [N]."""
    lse = torch.logsumexp(logits.float(), dim=-1)
    total = torch.where(targets != ignore_index, lse.square(), 0.0).sum()
    return total / _normaliser(targets, ignore_index, normaliser)


def _normaliser(targets, ignore_index, normaliser) -> torch.Tensor:
    if normaliser is None:
        return (targets != ignore_index).sum().clamp_min(1).float()
    return torch.as_tensor(normaliser, dtype=torch.float32, device=targets.device)


class LinearCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(
        ctx, hidden, weight, targets, ignore_index: int, normaliser, chunk_size: int, z_weight: float
    ):
        device_type = hidden.device.type
        dtype = (
            torch.get_autocast_dtype(device_type) if torch.is_autocast_enabled(device_type) else hidden.dtype
        )
        scale = 1.0 / _normaliser(targets, ignore_index, normaliser)
        w = weight.to(dtype)
        need_hidden, need_weight = ctx.needs_input_grad[:2]
        grad_hidden = torch.empty_like(hidden) if need_hidden else None
        grad_weight = (
            torch.zeros(weight.shape, dtype=torch.float32, device=weight.device) if need_weight else None
        )
        total = torch.zeros((), dtype=torch.float32, device=hidden.device)
        with torch.autocast(device_type, enabled=False):
            for start in range(0, hidden.shape[0], chunk_size):
                h = hidden[start : start + chunk_size].to(dtype)
                y = targets[start : start + chunk_size]
                logits = (h @ w.t()).float()
                valid = y != ignore_index
                safe_y = torch.where(valid, y, 0)
                lse = torch.logsumexp(logits, dim=-1)
                target_logit = logits.gather(1, safe_y[:, None]).squeeze(1)
                total += torch.where(valid, lse - target_logit + z_weight * lse.square(), 0.0).sum()
                # d loss / d logits = (softmax·(1 + 2w·lse) − onehot) · scale on targeted rows, 0 elsewhere.
                grad = logits.sub_(lse[:, None]).exp_()
                if z_weight:
                    grad.mul_(1.0 + 2.0 * z_weight * lse[:, None])
                grad.scatter_add_(1, safe_y[:, None], torch.full_like(lse[:, None], -1.0))
                grad = grad.mul_((valid.float() * scale)[:, None]).to(dtype)
                if grad_hidden is not None:
                    grad_hidden[start : start + chunk_size] = grad @ w
                if grad_weight is not None:
                    grad_weight += grad.t() @ h  # the product in the compute dtype, the sum in fp32
        ctx.save_for_backward(grad_hidden, grad_weight)
        ctx.weight_dtype = weight.dtype
        return total * scale

    @staticmethod
    def backward(ctx, grad_output):
        grad_hidden, grad_weight = ctx.saved_tensors
        if grad_hidden is not None:
            grad_hidden = grad_hidden * grad_output.to(grad_hidden.dtype)
        if grad_weight is not None:
            grad_weight = (grad_weight * grad_output).to(ctx.weight_dtype)
        return grad_hidden, grad_weight, None, None, None, None, None


def linear_cross_entropy_chunked(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    targets: torch.Tensor,
    ignore_index: int = -100,
    normaliser: torch.Tensor | float | None = None,
    chunk_size: int = 4096,
    z_loss_weight: float = 0.0,
) -> torch.Tensor:
    """Same result as `linear_cross_entropy_naive`, computed `chunk_size` tokens at a time; the gradients
    are formed in the forward, so no logits are kept (see the module docstring)."""
    if chunk_size < 1:
        raise ValueError(f"chunk_size={chunk_size} must be a positive number of tokens")
    return LinearCrossEntropy.apply(
        hidden, weight, targets, ignore_index, normaliser, chunk_size, float(z_loss_weight)
    )


__all__ = ["linear_cross_entropy_chunked", "linear_cross_entropy_naive", "z_loss"]

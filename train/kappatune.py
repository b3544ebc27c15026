"""KappaTune (Ludwig, "KappaTune: Mitigating Catastrophic Forgetting by Fine-Tuning the Tensors with the
Lowest Condition Number", arXiv 2506.16289): train only the weight tensors whose condition number

    κ(W) = σ_max(W) / σ_min(W)        (W reshaped to [shape[0], -1])

is lowest, freeze the rest; or put LoRA / KAN adapters on the modules owning those tensors.

Where this differs from the reference code, on purpose:
- σ comes from `torch.linalg.svdvals` in fp32 (fp64 on request) on an fp32 copy: the reference runs SVD on the
  stored dtype and silently skips bf16 tensors. Tensors of one shape are stacked and run as one batched call.
- the lowest κ are taken by sorting (κ, name): the reference truncates a Python set, so its choice is not
  the lowest κ and not deterministic.
- the budget is a tensor count (the reference's `N`) or a fraction of the model's parameters; tensors with a
  dimension above `max_dim` (embeddings, LM head) can be excluded.
- κ is cached in a JSON file keyed by a fingerprint of the weights, so a second run on the same model skips
  the SVDs.
- distributed: each rank computes κ for its share of the tensors (round-robin) and the results are
  all-gathered, so every rank selects the same tensors. Sharded weights (DeepSpeed ZeRO-3 parameters, FSDP2
  DTensors) are gathered one group at a time on every rank (a collective) before the SVD.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
from collections.abc import Iterator
from pathlib import Path

import torch
from torch import nn


def _world() -> tuple[int, int]:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


def _shape(p: torch.Tensor) -> tuple[int, ...]:
    return tuple(getattr(p, "ds_shape", p.shape))  # ZeRO-3 partitions hold a placeholder; ds_shape is real


def matrices(model: nn.Module) -> dict[str, tuple[int, ...]]:
    """Name -> shape of every parameter with two or more dimensions (the tensors KappaTune ranks)."""
    return {name: _shape(p) for name, p in model.named_parameters() if len(_shape(p)) >= 2}


@contextlib.contextmanager
def _full(params: list[torch.Tensor]) -> Iterator[list[torch.Tensor]]:
    """The full values of `params` on every rank: ZeRO-3 gathers them, DTensors are assembled, others pass."""
    if any(hasattr(p, "ds_id") for p in params):
        import deepspeed

        with deepspeed.zero.GatheredParameters(params, modifier_rank=None):
            yield [p.data for p in params]
        return
    yield [p.full_tensor() if hasattr(p, "full_tensor") else p.detach() for p in params]


def fingerprint(model: nn.Module) -> str:
    """A hash of every ≥2-D weight: name, shape, the fp64 sum and sum of squares, and a strided sample of
    values. Any training step changes it; it is cheap next to the SVDs. Every rank must call it (sharded
    weights are gathered)."""
    h = hashlib.sha256()
    named = [(n, p) for n, p in model.named_parameters() if len(_shape(p)) >= 2]
    for name, p in named:
        with _full([p]) as (w,):
            flat = w.detach().reshape(-1)
            sample = flat[:: max(1, flat.numel() // 4096)].float().cpu()
            stats = torch.stack([flat.double().sum(), flat.double().square().sum()]).cpu()
            h.update(f"{name}{tuple(w.shape)}".encode())
            h.update(stats.numpy().tobytes())
            h.update(sample.numpy().tobytes())
    return h.hexdigest()


def condition_numbers(
    model: nn.Module,
    *,
    max_dim: int | None = None,
    cache: str | Path | None = None,
    dtype: torch.dtype = torch.float32,
    batch_size: int = 16,
) -> dict[str, float]:
    """κ of every ≥2-D parameter of `model` (with no dimension above `max_dim`, when given: the SVD of an
    embedding table is the most expensive and it is excluded anyway), name -> κ (inf when σ_min = 0).

    `cache`: a JSON file; κ of these weights (by fingerprint) is read from it, and what it lacks is computed
    and added (rank 0 writes). `dtype`: the SVD's precision (fp32 or fp64). `batch_size`: how many
    same-shape tensors go through one batched `svdvals` call (and are gathered at once when sharded).
    """
    if dtype not in (torch.float32, torch.float64):
        raise ValueError(
            f"dtype={dtype} is not valid; KappaTune's SVD runs in torch.float32 or torch.float64"
        )
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size={batch_size!r} must be an integer >= 1")
    rank, world = _world()
    named = [
        (n, p)
        for n, p in model.named_parameters()
        if len(_shape(p)) >= 2 and (max_dim is None or max(_shape(p)) <= max_dim)
    ]
    key = fingerprint(model) if cache is not None else None
    known: list[dict[str, float]] = [{}]
    if cache is not None:  # rank 0 reads the cache and tells the others, so all ranks compute the same rest
        if rank == 0 and Path(cache).is_file():
            known[0] = json.loads(Path(cache).read_text()).get(key, {})
        if world > 1:
            torch.distributed.broadcast_object_list(known, src=0)
    known = {name: float(k) for name, k in known[0].items()}

    groups: dict[tuple[int, ...], list[tuple[int, str, torch.Tensor]]] = {}
    for i, (name, p) in enumerate(n for n in named if n[0] not in known):
        groups.setdefault(_shape(p), []).append((i, name, p))
    mine: dict[str, float] = {}
    for items in groups.values():
        for start in range(0, len(items), batch_size):
            chunk = items[start : start + batch_size]
            with _full([p for _, _, p in chunk]) as full:  # collective when sharded: every rank enters
                owned = [(name, w) for (i, name, _), w in zip(chunk, full, strict=True) if i % world == rank]
                if not owned:
                    continue
                stack = torch.stack([w.detach().reshape(w.shape[0], -1).to(dtype) for _, w in owned])
                if not torch.isfinite(stack).all():
                    bad = [name for name, w in owned if not torch.isfinite(w).all()]
                    raise ValueError(f"weights {bad} hold non-finite values; KappaTune cannot rank them")
                sigma = torch.linalg.svdvals(stack)  # [B, min(m, n)], descending
                kappa = sigma[:, 0] / sigma[:, -1]
                for (name, _), k in zip(owned, kappa.tolist(), strict=True):
                    mine[name] = k if math.isfinite(k) else math.inf
    computed = mine
    if world > 1:
        parts: list[dict[str, float] | None] = [None] * world
        torch.distributed.all_gather_object(parts, mine)
        computed = {name: k for part in parts for name, k in part.items()}
    if cache is not None and rank == 0 and computed:
        path = Path(cache)
        stored = json.loads(path.read_text()) if path.is_file() else {}
        stored[key] = {**stored.get(key, {}), **computed}
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(path.suffix + ".tmp")
        tmp.write_text(json.dumps(stored, indent=1))
        tmp.replace(path)
    found = {**known, **computed}
    return {name: found[name] for name, _ in named}  # model order


def select_lowest_kappa(
    model: nn.Module,
    kappa: dict[str, float],
    *,
    count: int | None = None,
    fraction: float | None = None,
    max_dim: int | None = None,
    linear_only: bool = False,
) -> list[str]:
    """The names of the lowest-κ tensors, lowest first (ties broken by name), within the budget.

    Exactly one budget: `count` tensors, or as many as fit in `fraction` of the model's parameters (taken in
    κ order, skipping any that would overflow it). `max_dim` excludes tensors with a dimension above it
    (embeddings, LM head). `linear_only` ranks only `nn.Linear` weights (to place adapters on them).
    """
    if (count is None) == (fraction is None):
        raise ValueError(f"give exactly one budget: count={count!r} or fraction={fraction!r}")
    if count is not None and (not isinstance(count, int) or count < 1):
        raise ValueError(f"count={count!r} must be an integer >= 1")
    if fraction is not None and not (isinstance(fraction, (int, float)) and 0 < fraction <= 1):
        raise ValueError(f"fraction={fraction!r} must be a number in (0, 1]")
    if max_dim is not None and (not isinstance(max_dim, int) or max_dim < 1):
        raise ValueError(f"max_dim={max_dim!r} must be null or an integer >= 1")
    shapes = matrices(model)
    unknown = sorted(set(kappa) - set(shapes))
    if unknown:
        raise ValueError(f"κ given for tensors the model does not have: {unknown[:5]}")
    linear = {f"{n}.weight" for n, m in model.named_modules() if isinstance(m, nn.Linear)}
    eligible = [
        name
        for name in kappa
        if (max_dim is None or max(shapes[name]) <= max_dim) and (not linear_only or name in linear)
    ]
    ranked = sorted(eligible, key=lambda name: (kappa[name], name))
    if count is not None:
        return ranked[:count]
    total = sum(math.prod(_shape(p)) for p in model.parameters())
    budget, chosen, used = fraction * total, [], 0
    for name in ranked:
        size = math.prod(shapes[name])
        if used + size <= budget:
            chosen.append(name)
            used += size
    return chosen


def freeze_all_but(model: nn.Module, names: list[str]) -> int:
    """`requires_grad` only for the named parameters (KappaTune's training set); returns their size."""
    params = dict(model.named_parameters())
    missing = [n for n in names if n not in params]
    if missing:
        raise ValueError(f"parameters {missing[:5]} are not in the model")
    keep = set(names)
    for name, p in params.items():
        p.requires_grad_(name in keep)
    return sum(math.prod(_shape(params[n])) for n in names)


def module_targets(names: list[str]) -> list[str]:
    """Full module names owning the selected `<module>.weight` tensors: `target_modules` for LoRA / KAN."""
    bad = [n for n in names if not n.endswith(".weight")]
    if bad:
        raise ValueError(
            f"{bad[:5]} are not module weights; select with linear_only=True for adapter targets"
        )
    return [n.removesuffix(".weight") for n in names]

"""Hyper-connections: the residual becomes n streams, mixed at every sublayer. `residual=` values:

- `"identity_hc"`: H_res = I (a baseline: the streams never mix except through H_pre / H_post).
- `"hc"`: Hyper-Connections (Zhu et al., ICLR 2025, arXiv 2409.19606, Eq. 5-10): static + dynamic (tanh).
- `"mhc"`: mHC (Xie et al., DeepSeek, arXiv 2512.24880, Eq. 7-9): H_res = Sinkhorn(exp(·)) doubly stochastic.
- `"mhc_lite"`: mHC-lite (arXiv 2601.05732): H_res = Σ_k a_k P_k over all n! permutations (Birkhoff).
- `"kromhc"`: KromHC (Zhou et al., arXiv 2601.21579): H_res = U¹ ⊗ … ⊗ U^K, 2×2 doubly stochastic U^k.
- `"shc"`: spectral-sphere HC: H_res = J + U_z·(U diag(σ) Vᵀ)·U_zᵀ, U, V Cayley-orthogonal, σ = tanh(·);
  the skew generators are tanh(logits) (γ = 1), U_z the Helmert basis of 1^⊥.
- `"jpmhc"`: JPmHC (Sengupta et al., arXiv 2602.18308): H_res on a manifold chosen by `jpmhc_manifold`:
  `"stiefel"` (Cayley-orthogonal), `"grassmann"` (I − (1−ρ)·YYᵀ, YYᵀ a rank-p projector: our reading of the
  paper's Grassmann mixer; eigenvalues 1 and ρ ∈ (−1, 1)), `"bistochastic"` (Sinkhorn solved to convergence,
  differentiated implicitly at the fixed point so backward memory does not grow with the iteration count).

Every site computes, per token, with the residual state x ∈ R^{n×C} ([batch, seq, n, hidden]):

    x_next = H_res · x + H_postᵀ · F(H_pre · x)    (mHC Eq. 3; H_res[j, i]: input stream i → output stream j)

with all coefficients in fp32 (`plait.kernels.stream_mix` fuses both mixes on CUDA). The model expands the
embedding ONCE into n copies (`HCStreams.expand`) and collapses ONCE before the final norm with a learned
weighted sum Σ_i w_i x_i, w initialised to 1/n: at init every variant keeps the n streams equal, so the
collapse returns exactly that stream (the plain residual when the variant starts at it), and the weights can
learn to favour streams. (The HC paper sums the streams; the final RMSNorm makes the two equal at init.)

Dynamic coefficients (`hc_dynamic=True`):
- `hc`/`identity_hc` follow HC: per-stream RMS norm x̄, A = A_static + s_α·tanh(x̄ W_α),
  B = B_static + s_β·tanh(x̄ W_β).
  Init (HC §3.3): W = 0, s = 0.01, B = 1, A_m = e_{site mod n}, A_r = I: exactly the pre-norm residual.
- The manifold variants follow mHC: x' = vec(x) RMS-normalised over all n·C values (applied after the matmul),
  one projection φ: nC → 2n + r (r residual logits), H̃ = α ⊙ (x'φ) + b with α_pre, α_post, α_res init 0.01,
  φ init 0 (the dynamic part starts at zero, as HC's W), H_pre = σ(H̃_pre), H_post = 2σ(H̃_post).
  b init: pre/post logits +1 on stream (site mod n), −1 elsewhere; the residual logits put H_res at or near I
  (mHC/mhc_lite/bistochastic: 0 on the identity, −8 elsewhere; kromhc: [0, −8] per factor; shc: σ logits 4,
  skew logits 0; stiefel: skew 0 → exactly I; grassmann: ρ logit 4 → near I).

Static HC parameters (`static_*`, `bias`, `alpha`, `scale_*`, the collapse weights) should not be decayed:
`no_decay_parameter_names(model)` lists them by name for the trainer.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable

import torch
from torch import nn
from transformers import initialization as init

from plait.kernels.sinkhorn import sinkhorn
from plait.kernels.stream_mix import post_res_mix, pre_mix

from .registry import RESIDUALS
from .residual import ResidualKind

JPMHC_MANIFOLDS = ("stiefel", "grassmann", "bistochastic")
MHC_LITE_MAX_STREAMS = 6
RES_OFF_LOGIT = -8.0  # logit of the non-identity entries/permutations/factor weights at init
SIGMA_LOGIT = 4.0  # shc σ and grassmann ρ logits at init: tanh(4) ≈ 0.9993


def _rms(x: torch.Tensor, eps: float) -> torch.Tensor:
    return torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps)


def skew(entries: torch.Tensor, m: int) -> torch.Tensor:
    """[..., m(m-1)/2] → skew-symmetric [..., m, m] (upper triangle from `entries`)."""
    a = entries.new_zeros(entries.shape[:-1] + (m, m))
    iu = torch.triu_indices(m, m, offset=1, device=entries.device)
    a[..., iu[0], iu[1]] = entries
    return a - a.transpose(-1, -2)


def cayley(a: torch.Tensor) -> torch.Tensor:
    """Cayley map of a skew-symmetric A: Q = (I + A)⁻¹(I − A), orthogonal (never reaches eigenvalue −1)."""
    eye = torch.eye(a.shape[-1], device=a.device, dtype=a.dtype).expand_as(a)
    return torch.linalg.solve(eye + a, eye - a)


def helmert_basis(n: int) -> torch.Tensor:
    """U_z ∈ R^{n×(n−1)}: orthonormal columns orthogonal to the all-ones vector (Helmert contrasts)."""
    u = torch.zeros(n, n - 1)
    for k in range(1, n):
        u[:k, k - 1] = 1.0
        u[k, k - 1] = -float(k)
        u[:, k - 1] /= math.sqrt(k * (k + 1))
    return u


def _scaling_system(p: torch.Tensor, diag_rows: torch.Tensor, diag_cols: torch.Tensor) -> torch.Tensor:
    """[[diag(r), P], [Pᵀ, diag(c)]] plus the projector on (1, −1)/√(2n), which leaves P fixed."""
    n = p.shape[-1]
    top = torch.cat((torch.diag_embed(diag_rows), p), -1)
    bottom = torch.cat((p.transpose(-1, -2), torch.diag_embed(diag_cols)), -1)
    v = torch.cat((torch.ones(n), -torch.ones(n))).to(p) / math.sqrt(2 * n)
    return torch.cat((top, bottom), -2) + v[:, None] * v[None, :]


def _bistochastic_fixed_point(
    logits: torch.Tensor, iters: int, tol: float, newton_steps: int = 30
) -> torch.Tensor:
    """Sinkhorn's fixed point in fp64: `iters` log-domain Sinkhorn iterations as a warm start, then Newton on
    the log-scalings f, g (Jacobian = the scaling system) until row and column sums are within `tol`; Sinkhorn
    alone converges slowly when exp(logits) is nearly decomposable (e.g. the −8 identity-leaning init)."""
    y = logits.double()
    n = y.shape[-1]
    for _ in range(iters):
        y = y - torch.logsumexp(y, dim=-2, keepdim=True)
        y = y - torch.logsumexp(y, dim=-1, keepdim=True)
    for _ in range(newton_steps):
        p = y.exp()
        rows, cols = p.sum(-1), p.sum(-2)
        err = torch.cat((rows - 1, cols - 1), -1)
        if err.abs().max() < tol:
            break
        step = torch.linalg.solve(_scaling_system(p, rows, cols), -err.unsqueeze(-1)).squeeze(-1)
        y = y + step[..., :n, None] + step[..., None, n:]
    return (y - torch.logsumexp(y, dim=-1, keepdim=True)).exp()  # rows exact


class SinkhornImplicit(torch.autograd.Function):
    """Sinkhorn projection solved to convergence without autograd (Sinkhorn warm start + Newton, fp64);
    backward by implicit differentiation at the fixed point (JPmHC §4), so no iterate is stored.

    With P = diag(e^f) exp(L) diag(e^g) doubly stochastic, perturbing L and keeping both marginals fixed gives
    `dL_ij = P_ij (G_ij + λ_i + μ_j)` where `[λ; μ]` solves
    `[[I, P], [Pᵀ, I]] [λ; μ] = −[rowsum(G∘P); colsum(G∘P)]` (G = dℓ/dP). The system is singular along
    (1, −1), the shift f + c, g − c that leaves P unchanged; the right-hand side is orthogonal to it,
    so we add that direction's projector and solve (fp64, 2n×2n).
    """

    @staticmethod
    def forward(ctx, logits: torch.Tensor, iters: int, tol: float) -> torch.Tensor:
        with torch.no_grad():
            p = _bistochastic_fixed_point(logits, iters, tol).float()
        ctx.save_for_backward(p)
        return p

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (p,) = ctx.saved_tensors
        n = p.shape[-1]
        pd = p.double()
        gp = grad.double() * pd
        rhs = -torch.cat((gp.sum(-1), gp.sum(-2)), dim=-1)  # [..., 2n]
        ones = pd.new_ones(pd.shape[:-1])
        sol = torch.linalg.solve(_scaling_system(pd, ones, ones), rhs.unsqueeze(-1)).squeeze(-1)
        lam, mu = sol[..., :n], sol[..., n:]
        dl = pd * (grad.double() + lam[..., :, None] + mu[..., None, :])
        return dl.to(grad.dtype), None, None


def sinkhorn_implicit(logits: torch.Tensor, iters: int, tol: float = 1e-7) -> torch.Tensor:
    """Doubly stochastic projection of exp(logits) at Sinkhorn's fixed point (rows exact)."""
    return SinkhornImplicit.apply(logits, iters, tol)


class HCStreams(nn.Module):
    """Expand once after the embedding (n copies), collapse once before the final norm (Σ_i w_i x_i)."""

    no_decay = ("collapse_weight",)

    def __init__(self, config):
        super().__init__()
        self.n = config.hc_streams
        self.collapse_weight = nn.Parameter(torch.full((self.n,), 1.0 / self.n))

    def init_plait_weights(self) -> None:
        init.constant_(self.collapse_weight, 1.0 / self.n)

    def expand(self, h: torch.Tensor) -> torch.Tensor:
        return h.unsqueeze(-2).expand(*h.shape[:-1], self.n, h.shape[-1]).contiguous()

    def collapse(self, x: torch.Tensor) -> torch.Tensor:
        return torch.einsum("...ic,i->...c", x.float(), self.collapse_weight.float()).to(x.dtype)


class HCSite(nn.Module):
    """One sublayer site: coefficients (fp32) from the state, then the fused pre-mix / post+res-mix.

    Set `record = True` to keep the last coefficients used in `recorded` (see `plait.modeling.diagnostics`).
    """

    no_decay: tuple[str, ...] = ()

    def __init__(self, config, site_idx: int):
        super().__init__()
        self.n = config.hc_streams
        self.hidden = config.hidden_size
        self.site_idx = site_idx
        self.dynamic = config.hc_dynamic
        self.eps = config.rms_norm_eps
        self.record = False
        self.recorded: dict[str, torch.Tensor] | None = None

    def coefficients(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(H_pre [..., n], H_post [..., n], H_res [..., n, n]) in fp32; static ones may omit leading dims."""
        raise NotImplementedError

    def matmul_weights(self) -> list[tuple[nn.Parameter, int]]:
        """The weights the state is multiplied with, each with how often per token (for FLOP counts)."""
        return []

    def forward(self, x: torch.Tensor, sublayer: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
        lead, n = x.shape[:-2], self.n
        h_pre, h_post, h_res = self.coefficients(x)
        h_pre, h_post, h_res = h_pre.expand(*lead, n), h_post.expand(*lead, n), h_res.expand(*lead, n, n)
        if self.record:
            self.recorded = {"h_pre": h_pre.detach(), "h_post": h_post.detach(), "h_res": h_res.detach()}
        y = sublayer(pre_mix(x, h_pre))
        return post_res_mix(x, y, h_post, h_res)


class HyperConnectionSite(HCSite):
    """HC (Zhu et al., Eq. 5-10): [A_m, A_r] = static + s_α·tanh(x̄ W_α), B = static + s_β·tanh(x̄ W_β)."""

    identity_res = False
    no_decay = ("static_pre", "static_post", "static_res", "scale_alpha", "scale_beta")

    def __init__(self, config, site_idx: int):
        super().__init__(config, site_idx)
        n, c = self.n, self.hidden
        self.static_pre = nn.Parameter(torch.zeros(n))
        self.static_post = nn.Parameter(torch.ones(n))
        if not self.identity_res:
            self.static_res = nn.Parameter(torch.eye(n))
        if self.dynamic:
            self.weight_alpha = nn.Parameter(torch.zeros(c, 1 if self.identity_res else 1 + n))
            self.weight_beta = nn.Parameter(torch.zeros(c))
            self.scale_alpha = nn.Parameter(torch.tensor(0.01))
            self.scale_beta = nn.Parameter(torch.tensor(0.01))
        with torch.no_grad():
            self.static_pre[site_idx % self.n] = 1.0

    def init_plait_weights(self) -> None:
        init.copy_(
            self.static_pre, nn.functional.one_hot(torch.tensor(self.site_idx % self.n), self.n).float()
        )
        init.ones_(self.static_post)
        if not self.identity_res:
            init.copy_(self.static_res, torch.eye(self.n))
        if self.dynamic:
            init.zeros_(self.weight_alpha)
            init.zeros_(self.weight_beta)
            init.constant_(self.scale_alpha, 0.01)
            init.constant_(self.scale_beta, 0.01)

    def matmul_weights(self):
        return [(self.weight_alpha, self.n), (self.weight_beta, self.n)] if self.dynamic else []  # per stream

    def coefficients(self, x):
        eye = torch.eye(self.n, device=x.device)
        if not self.dynamic:
            return (
                self.static_pre.float(),
                self.static_post.float(),
                eye if self.identity_res else self.static_res.T,
            )
        xf = x.float()
        xn = xf * _rms(xf, self.eps)  # per-stream norm x̄
        a = self.scale_alpha * torch.tanh(xn @ self.weight_alpha.float())  # [..., n(i), 1 + n]
        h_pre = self.static_pre + a[..., 0]
        h_post = self.static_post + self.scale_beta * torch.tanh(xn @ self.weight_beta.float())
        if self.identity_res:
            return h_pre, h_post, eye
        a_res = self.static_res + a[..., 1:]  # A_r[i, j]: input i → output j; H_res = A_rᵀ
        return h_pre, h_post, a_res.transpose(-1, -2)


class IdentityHCSite(HyperConnectionSite):
    """HC's H_pre / H_post with H_res fixed to the identity."""

    identity_res = True
    no_decay = ("static_pre", "static_post", "scale_alpha", "scale_beta")


class ManifoldSite(HCSite):
    """mHC-style coefficients; subclasses define the residual logits: res_count, res_init, res_matrix."""

    no_decay = ("bias", "alpha")

    def __init__(self, config, site_idx: int):
        super().__init__(config, site_idx)
        n = self.n
        self.num_logits = 2 * n + self.res_count()
        if self.dynamic:
            self.phi = nn.Parameter(torch.zeros(n * self.hidden, self.num_logits))
            self.alpha = nn.Parameter(torch.full((3,), 0.01))
        self.bias = nn.Parameter(self.initial_bias())

    def matmul_weights(self):
        return [(self.phi, 1)] if self.dynamic else []  # the flattened n streams, once per token

    def res_count(self) -> int:
        raise NotImplementedError

    def init_buffers(self) -> None:
        """Refill non-persistent buffers (models loaded by `from_pretrained` are built on the meta device)."""

    def res_init(self) -> torch.Tensor:
        raise NotImplementedError

    def res_matrix(self, logits: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def initial_bias(self) -> torch.Tensor:
        one = torch.full((self.n,), -1.0)
        one[self.site_idx % self.n] = 1.0
        return torch.cat((one, one, self.res_init().float()))

    def init_plait_weights(self) -> None:
        self.init_buffers()
        init.copy_(self.bias, self.initial_bias())
        if self.dynamic:
            init.zeros_(self.phi)
            init.constant_(self.alpha, 0.01)

    def coefficients(self, x):
        n = self.n
        logits = self.bias.float()
        if self.dynamic:
            flat = x.float().flatten(-2)  # vec(x) over all n·C values
            proj = (flat @ self.phi.float()) * _rms(flat, self.eps)  # RMSNorm applied after the matmul
            scale = torch.repeat_interleave(
                self.alpha.float(), torch.tensor([n, n, self.num_logits - 2 * n], device=x.device)
            )
            logits = proj * scale + logits
        h_pre = torch.sigmoid(logits[..., :n])
        h_post = 2.0 * torch.sigmoid(logits[..., n : 2 * n])
        return h_pre, h_post, self.res_matrix(logits[..., 2 * n :])

    def _identity_leaning(self, count: int, identity_index: int) -> torch.Tensor:
        b = torch.full((count,), RES_OFF_LOGIT)
        b[identity_index] = 0.0
        return b


class MHCSite(ManifoldSite):
    """mHC: H_res = Sinkhorn(exp(H̃_res)), `sinkhorn_iters` log-domain iterations (kernels/sinkhorn.py)."""

    def __init__(self, config, site_idx: int):
        self.iters = config.sinkhorn_iters
        super().__init__(config, site_idx)

    def res_count(self):
        return self.n * self.n

    def res_init(self):
        return torch.where(torch.eye(self.n, dtype=torch.bool), 0.0, RES_OFF_LOGIT).flatten()

    def res_matrix(self, logits):
        return sinkhorn(logits.unflatten(-1, (self.n, self.n)), self.iters)


class MHCLiteSite(ManifoldSite):
    """mHC-lite: H_res = Σ_k softmax(H̃_res)_k P_k over the n! permutation matrices (identity first)."""

    def __init__(self, config, site_idx: int):
        self._num_perms = math.factorial(config.hc_streams)
        super().__init__(config, site_idx)
        self.register_buffer("perms", self.permutation_matrices(), persistent=False)  # [n!, n, n]

    def permutation_matrices(self) -> torch.Tensor:
        return torch.eye(self.n)[torch.tensor(list(itertools.permutations(range(self.n))))]

    def init_buffers(self):
        init.copy_(self.perms, self.permutation_matrices())

    def res_count(self):
        return self._num_perms

    def res_init(self):
        return self._identity_leaning(self._num_perms, 0)

    def res_matrix(self, logits):
        return torch.einsum("...k,kji->...ji", torch.softmax(logits, -1), self.perms.float())


class KromHCSite(ManifoldSite):
    """KromHC: H_res = U¹ ⊗ … ⊗ U^K, U^k = [[p, 1−p], [1−p, p]], (p, 1−p) = softmax(2 logits)."""

    def res_count(self):
        return 2 * int(math.log2(self.n))

    def res_init(self):
        return torch.tensor([0.0, RES_OFF_LOGIT]).repeat(self.res_count() // 2)

    def res_matrix(self, logits):
        lead = logits.shape[:-1]
        res = logits.new_ones(lead + (1, 1))
        for k in range(self.res_count() // 2):
            p = torch.softmax(logits[..., 2 * k : 2 * k + 2], -1)
            u = torch.stack((p, p.flip(-1)), -2)  # [[p, 1−p], [1−p, p]]
            a = res.shape[-1]
            res = (res[..., :, None, :, None] * u[..., None, :, None, :]).reshape(lead + (2 * a, 2 * a))
        return res


class SHCSite(ManifoldSite):
    """Spectral-sphere HC: H_res = J + U_z (U diag(σ) Vᵀ) U_zᵀ; rows/cols sum to 1, spectral norm 1."""

    def __init__(self, config, site_idx: int):
        super().__init__(config, site_idx)
        n = self.n
        self.register_buffer("basis", helmert_basis(n), persistent=False)
        self.register_buffer("mean", torch.full((n, n), 1.0 / n), persistent=False)

    def init_buffers(self):
        init.copy_(self.basis, helmert_basis(self.n))
        init.constant_(self.mean, 1.0 / self.n)

    def _sizes(self):
        m = self.n - 1
        return m, m * (m - 1) // 2

    def res_count(self):
        m, k = self._sizes()
        return 2 * k + m

    def res_init(self):
        m, k = self._sizes()
        return torch.cat((torch.zeros(2 * k), torch.full((m,), SIGMA_LOGIT)))

    def res_matrix(self, logits):
        m, k = self._sizes()
        mean, basis = self.mean.float(), self.basis.float()  # buffers follow model.to(dtype)
        if m == 0:
            return mean
        u = cayley(skew(torch.tanh(logits[..., :k]), m))
        v = cayley(skew(torch.tanh(logits[..., k : 2 * k]), m))
        sigma = torch.tanh(logits[..., 2 * k :])
        core = (u * sigma[..., None, :]) @ v.transpose(-1, -2)
        return mean + basis @ core @ basis.T


class JPmHCSite(ManifoldSite):
    """JPmHC: H_res on the Stiefel (Cayley), Grassmann (I − (1−ρ)YYᵀ) or Birkhoff (implicit Sinkhorn) set."""

    def __init__(self, config, site_idx: int):
        self.manifold = config.jpmhc_manifold
        self.rank = config.jpmhc_rank or max(1, config.hc_streams // 2)
        self.iters = config.sinkhorn_iters
        super().__init__(config, site_idx)

    def res_count(self):
        n = self.n
        if self.manifold == "bistochastic":
            return n * n
        return n * (n - 1) // 2 + (self.manifold == "grassmann")

    def res_init(self):
        n = self.n
        if self.manifold == "bistochastic":
            return torch.where(torch.eye(n, dtype=torch.bool), 0.0, RES_OFF_LOGIT).flatten()
        b = torch.zeros(self.res_count())
        if self.manifold == "grassmann":
            b[-1] = SIGMA_LOGIT
        return b

    def res_matrix(self, logits):
        n = self.n
        if self.manifold == "bistochastic":
            return sinkhorn_implicit(logits.unflatten(-1, (n, n)), self.iters)
        k = n * (n - 1) // 2
        q = cayley(skew(logits[..., :k], n))
        if self.manifold == "stiefel":
            return q
        y = q[..., :, : self.rank]
        projector = y @ y.transpose(-1, -2)
        rho = torch.tanh(logits[..., k:])[..., None]
        return torch.eye(n, device=logits.device) - (1 - rho) * projector


# --- config validation and registration ---------------------------------------------------------------------


def _site_params(config, res_logits: int, n: int | None = None) -> str:
    n, c = n or config.hc_streams, config.hidden_size
    per_site = n * c * (2 * n + res_logits) if config.hc_dynamic else 2 * n + res_logits
    total = per_site * 2 * config.num_hidden_layers
    return f"{per_site:,} parameters per site, {total:,} over the {2 * config.num_hidden_layers} sites"


def check_common(config) -> None:
    if not isinstance(config.hc_streams, int) or config.hc_streams < 1:
        raise ValueError(f"hc_streams={config.hc_streams!r} must be a positive integer")
    if not isinstance(config.sinkhorn_iters, int) or config.sinkhorn_iters < 1:
        raise ValueError(f"sinkhorn_iters={config.sinkhorn_iters!r} must be a positive integer")


def check_mhc_lite(config) -> None:
    check_common(config)
    n = config.hc_streams
    if n > MHC_LITE_MAX_STREAMS and not config.hc_force:
        raise ValueError(
            f"residual='mhc_lite' with hc_streams={n} mixes n! = {math.factorial(n):,} permutation matrices: "
            f"{_site_params(config, math.factorial(n))} (cost n·C·(n!+2n)); valid hc_streams without "
            f"hc_force=True: 1..{MHC_LITE_MAX_STREAMS}. Use residual='kromhc' for large n."
        )


def check_kromhc(config) -> None:
    check_common(config)
    n = config.hc_streams
    if n & (n - 1):
        lo = 1 << (n.bit_length() - 1)
        raise ValueError(
            f"residual='kromhc' needs hc_streams a power of 2 (a Kronecker product of 2x2 factors); got "
            f"hc_streams={n}. Valid: 1, 2, 4, 8, ...; KromHC costs n·C·(2n + 2·log2 n) parameters per site: "
            f"n={lo}: {_site_params(config, 2 * lo.bit_length() - 2, lo)}; "
            f"n={2 * lo}: {_site_params(config, 2 * lo.bit_length(), 2 * lo)}."
        )


def check_jpmhc(config) -> None:
    check_common(config)
    if config.jpmhc_manifold not in JPMHC_MANIFOLDS:
        raise ValueError(
            f"jpmhc_manifold={config.jpmhc_manifold!r} is not a valid choice; valid choices: "
            f"{list(JPMHC_MANIFOLDS)}"
        )
    if config.jpmhc_rank is not None and not 1 <= config.jpmhc_rank <= config.hc_streams:
        raise ValueError(f"jpmhc_rank={config.jpmhc_rank!r} must lie in [1, hc_streams={config.hc_streams}]")


def _kind(site_cls) -> type[ResidualKind]:
    return type(f"{site_cls.__name__}Kind", (ResidualKind,), {"streams": HCStreams, "site": site_cls})


for _name, _site, _check in (
    ("identity_hc", IdentityHCSite, check_common),
    ("hc", HyperConnectionSite, check_common),
    ("mhc", MHCSite, check_common),
    ("mhc_lite", MHCLiteSite, check_mhc_lite),
    ("kromhc", KromHCSite, check_kromhc),
    ("shc", SHCSite, check_common),
    ("jpmhc", JPmHCSite, check_jpmhc),
):
    RESIDUALS.register(_name, validate=_check)(_kind(_site))

HC_RESIDUALS = ("identity_hc", "hc", "mhc", "mhc_lite", "kromhc", "shc", "jpmhc")


def no_decay_parameter_names(model: nn.Module) -> set[str]:
    """Names of the static HC/mixing parameters to keep out of weight decay."""
    names = set()
    for prefix, module in model.named_modules():
        if isinstance(module, (HCSite, HCStreams)):
            for pname in module.no_decay:
                if getattr(module, pname, None) is not None and isinstance(
                    getattr(module, pname), nn.Parameter
                ):
                    names.add(f"{prefix}.{pname}" if prefix else pname)
    return names


__all__ = [
    "HC_RESIDUALS",
    "HCSite",
    "HCStreams",
    "no_decay_parameter_names",
    "cayley",
    "helmert_basis",
    "sinkhorn_implicit",
]

"""ParaRNN token mixers: nonlinear GRU / LSTM layers trained in parallel over the sequence.

Danieli et al. 2025, "ParaRNN: Unlocking Parallel Training of Nonlinear RNNs for Large Language Models".
The recurrence h_t = f(h_{t-1}, x_t), t = 1..T, is solved as one system F(H) = 0 with Newton's method
(Sec. 3): starting from h_t⁰ = f(0, x_t), each iteration linearises f around the current iterate,

    h_tᵏ⁺¹ = A_t h_{t-1}ᵏ⁺¹ + (f(h_{t-1}ᵏ, x_t) − A_t h_{t-1}ᵏ),    A_t = ∂f/∂h (h_{t-1}ᵏ, x_t),

a linear recurrence solved by a parallel scan (`plait.kernels.linear_scan`) in fp32. The cells are built
so A_t is diagonal (ParaGRU) or 2×2 per channel (ParaLSTM), keeping Newton exact and the scan cheap.

Backward (implicit function theorem, nothing from the Newton iterations is stored): at the solution H,
one reverse linear scan g_t = ∂L/∂h_t + A_{t+1}ᵀ g_{t+1}, then one batched VJP of f over all t with the
cotangents g_t gives the gradients of the input projections, the cell parameters and the initial state.

Cells (per channel; u_* = B_* x + b_* are the input projections, computed for all t at once by one
`in_proj` Linear whose output is split into heads of `head_dim` channels, the "multi-head" projection):
- ParaGRU: z = σ(a_z h + u_z), r = σ(a_r h + u_r), h̃ = tanh(a_h (h r) + u_h), h' = z h̃ + (1 − z) h.
- ParaLSTM (CIFG with peepholes, state [c, h]): f = σ(a_f h + u_f + p_f c), c̃ = tanh(a_c h + u_c),
  c' = f c + (1 − f) c̃, o = σ(a_o h + u_o + p_o c'), h' = o tanh(c').
The Jacobians are taken by forward-mode AD of the cell (one JVP per state component), so they are exact.

Config fields: `layer_types` entries `"pararnn_gru"` / `"pararnn_lstm"`; `pararnn_mode` ("auto" →
"triton" on CUDA, "parallel" elsewhere; "sequential" = the ground-truth loop with autograd through time);
`pararnn_newton_iters` (default 3, as in the reference code). The last Newton residual max|h − f(h_prev)|
of each layer is kept in `mixer.last_residual` (a 0-dim tensor, no host sync) for monitoring.

Inference: with a cache, the final state is stored in the layer's cache entry (a `ParaRNNCacheLayer`, so
`DynamicCache(config=...)` builds it from `layer_types`), and the next call starts from it: single-token
decoding is one recurrent step, so `generate()` works for pure-RNN and hybrid models.
Padding: a padded position (from the attention mask) keeps the state unchanged (h_t = h_{t-1}), so
left-padded prompts give the same states as unpadded ones; outputs at padded positions are meaningless.
The mixer ignores `position_embeddings` (an RNN is order-aware by itself).

Bidirectional backbones (`config.is_causal` False, the ViT): a one-way scan would let each token see only the
tokens before it, so the mixer runs a second cell, with its own input projection and state weights, over the
reversed sequence, and concatenates the two hidden states of each token before `out_proj` (as a
bidirectional RNN does). In the ViT the sequence is the CLS token followed by the patches in raster order
(row-major: left to right, top to bottom); the forward scan runs CLS → first patch → ... → last patch, the
backward scan last patch → ... → first patch → CLS, so the CLS token's backward state has seen every patch.
A bidirectional mixer has no recurrent cache (there is no incremental decoding of an image).
"""

from __future__ import annotations

import torch
from torch import nn
from transformers import initialization as init
from transformers.cache_utils import STATIC_LAYER_TYPE_MAPPING, CacheLayerMixin, LinearAttentionLayer

from plait.kernels.linear_scan import SCAN_MODES, _matvec2, linear_scan, resolve_mode

from .registry import TOKEN_MIXERS

PARARNN_MODES = ("auto", *SCAN_MODES)


# ------------------------------------------------------------------------------------------------ cells
def gru_cell(hp: torch.Tensor, u: torch.Tensor, keep: torch.Tensor | None, a: torch.Tensor) -> torch.Tensor:
    """ParaGRU step for all t at once. hp: [B, T, D] previous states, u: [B, T, D, 3] input projections
    (z, r, h̃), keep: [B, T, 1] 1 = real token, 0 = padding (state unchanged) or None, a: [3, D]."""
    z = torch.sigmoid(a[0] * hp + u[..., 0])
    r = torch.sigmoid(a[1] * hp + u[..., 1])
    cand = torch.tanh(a[2] * (hp * r) + u[..., 2])
    h = z * cand + (1 - z) * hp
    return h if keep is None else keep * h + (1 - keep) * hp


def lstm_cell(
    hp: torch.Tensor, u: torch.Tensor, keep: torch.Tensor | None, a: torch.Tensor, p: torch.Tensor
) -> torch.Tensor:
    """ParaLSTM (CIFG + peepholes) step. hp: [B, T, D, 2] previous (c, h), u: [B, T, D, 3] projections
    (f, c̃, o), a: [3, D] state weights, p: [2, D] peepholes (forget, output)."""
    c0, h0 = hp[..., 0], hp[..., 1]
    f = torch.sigmoid(a[0] * h0 + u[..., 0] + p[0] * c0)
    cand = torch.tanh(a[1] * h0 + u[..., 1])
    c = f * c0 + (1 - f) * cand
    o = torch.sigmoid(a[2] * h0 + u[..., 2] + p[1] * c)
    out = torch.stack((c, o * torch.tanh(c)), -1)
    return out if keep is None else keep[..., None] * out + (1 - keep[..., None]) * hp


CELLS = {"gru": (gru_cell, False), "lstm": (lstm_cell, True)}  # name -> (cell, 2×2 block Jacobian?)


def cell_and_jacobian(cell, block: bool, hp, u, keep, params):
    """f(hp) and A = ∂f/∂hp: diagonal [B, T, D], or block [B, T, D, 2, 2] with A[..., i, j] = ∂f_i/∂hp_j.
    Each channel's output depends only on that channel's state, so JVPs with all-ones tangents (per state
    component) read off the exact Jacobian entries."""

    def f(h):
        return cell(h, u, keep, *params)

    if not block:
        return torch.func.jvp(f, (hp,), (torch.ones_like(hp),))
    e_c = torch.zeros_like(hp)
    e_c[..., 0] = 1
    out, col_c = torch.func.jvp(f, (hp,), (e_c,))
    _, col_h = torch.func.jvp(f, (hp,), (1 - e_c,))
    return out, torch.stack((col_c, col_h), -1)


def _apply(A, x, block):
    return _matvec2(A, x) if block else A * x


def _shift(H: torch.Tensor, h0: torch.Tensor, carry: torch.Tensor | None, block: bool) -> torch.Tensor:
    """[h_0, h_1, ..., h_{T-1}]: the previous state of every step, zeroed where `carry` is 0 (a new
    document starts there, so its first step sees the zero state as at the start of a sequence)."""
    hp = torch.cat((h0[:, None], H[:, :-1]), 1)
    return hp if carry is None else hp * _expand(carry, block)


def _expand(carry: torch.Tensor, block: bool) -> torch.Tensor:
    return carry[..., None] if block else carry  # [B, T, 1] -> broadcastable to the state


def _carried(A: torch.Tensor, carry: torch.Tensor | None, block: bool) -> torch.Tensor:
    """∂f/∂h_{t-1} through the reset: the Jacobian with respect to the zeroed input times `carry`."""
    if carry is None:
        return A
    return A * (carry[..., None, None] if block else carry)


def newton_solve(cell, block, u, keep, carry, params, h0, iters: int, mode: str):
    """Solve h_t = f(c_t·h_{t-1}, u_t) for all t by `iters` Newton iterations from h_t = f(0, u_t) (h_0 at
    t = 1); c_t = `carry` (1, or 0 where a document starts; None: all 1). Returns the states [B, T, D(, 2)]
    and the final residual max|h_t − f(c_t·h_{t-1})| as a 0-dim tensor."""
    hp = torch.zeros_like(h0[:, None]).expand(-1, u.shape[1], *h0.shape[1:]).clone()
    hp[:, 0] = h0 if carry is None else h0 * _expand(carry[:, 0], block)
    H = cell(hp, u, keep, *params)
    for _ in range(iters):
        hp = _shift(H, h0, carry, block)
        fx, A = cell_and_jacobian(cell, block, hp, u, keep, params)
        rhs = fx - _apply(A, hp, block)
        rhs[:, 0] = fx[:, 0]  # h_0 is fixed, not an unknown: the first step carries no A_1 h_0 term
        H = linear_scan(_carried(A, carry, block), rhs, mode)
    residual = (H - cell(_shift(H, h0, carry, block), u, keep, *params)).abs().max()
    return H, residual


class ParaRNNFunction(torch.autograd.Function):
    """Newton forward + implicit (IFT) backward; see the module docstring. Computes in fp32."""

    @staticmethod
    def forward(ctx, cell_name, mode, iters, u, keep, carry, h0, *params):
        cell, block = CELLS[cell_name]
        dtypes = (u.dtype, h0.dtype, [p.dtype for p in params])
        u32, h032 = u.float(), h0.float()
        p32 = tuple(p.float() for p in params)
        keep32 = None if keep is None else keep.float()
        carry32 = None if carry is None else carry.float()
        H, residual = newton_solve(cell, block, u32, keep32, carry32, p32, h032, iters, mode)
        ctx.save_for_backward(H, u32, h032, keep32, carry32, *p32)
        ctx.cell_name, ctx.mode, ctx.dtypes = cell_name, mode, dtypes
        ctx.mark_non_differentiable(residual)
        return H.to(u.dtype), residual

    @staticmethod
    def backward(ctx, grad_H, _grad_residual):
        H, u, h0, keep, carry, *params = ctx.saved_tensors
        cell, block = CELLS[ctx.cell_name]
        hp = _shift(H, h0, carry, block)
        with torch.no_grad():
            _, A = cell_and_jacobian(cell, block, hp, u, keep, params)
            A = _carried(A, carry, block)
            # g_t = dL/dh_t + A_{t+1}ᵀ g_{t+1}: a reverse scan whose step-t coefficient is A_{t+1}ᵀ
            At = A.transpose(-1, -2) if block else A
            At = torch.cat((At[:, 1:], torch.zeros_like(At[:, :1])), 1)
            g = linear_scan(At, grad_H.float(), ctx.mode, reverse=True)
        with torch.enable_grad():
            leaves = [hp.detach().requires_grad_(), u.detach().requires_grad_()]
            leaves += [p.detach().requires_grad_() for p in params]
            out = cell(leaves[0], leaves[1], keep, *leaves[2:])
            grads = torch.autograd.grad(out, leaves, g)
        u_dtype, h0_dtype, p_dtypes = ctx.dtypes
        grad_h0 = grads[0][:, 0]  # ∂f(c_1·h_0, u_1)/∂h_0ᵀ g_1
        if carry is not None:
            grad_h0 = grad_h0 * _expand(carry[:, 0], block)
        grad_params = tuple(gp.to(dt) for gp, dt in zip(grads[2:], p_dtypes, strict=True))
        return (None, None, None, grads[1].to(u_dtype), None, None, grad_h0.to(h0_dtype), *grad_params)


def rnn_sequential(cell_name, u, keep, carry, h0, params):
    """Ground truth: the plain loop h_t = f(c_t·h_{t-1}, u_t), differentiated by autograd through time."""
    cell, block = CELLS[cell_name]
    h, out = h0, []
    steps = u.unbind(1)  # one unbind (not T slices): its backward is one stack, so the loop stays O(T)
    keeps = keep.unbind(1) if keep is not None else [None] * len(steps)
    carries = carry.unbind(1) if carry is not None else [None] * len(steps)
    for u_t, k_t, c_t in zip(steps, keeps, carries, strict=True):
        if c_t is not None:
            h = h * _expand(c_t, block)
        h = cell(h[:, None], u_t[:, None], None if k_t is None else k_t[:, None], *params)[:, 0]
        out.append(h)
    return torch.stack(out, 1)


def pararnn(
    cell_name: str,
    u: torch.Tensor,
    params,
    h0: torch.Tensor | None = None,
    keep: torch.Tensor | None = None,
    mode: str = "auto",
    iters: int = 3,
    carry: torch.Tensor | None = None,
):
    """Run a ParaRNN cell over a sequence. u: [B, T, D, 3]; params: the cell's parameter tensors;
    h0: initial state [B, D] (GRU) or [B, D, 2] (LSTM), zeros if None; keep: [B, T, 1] padding keep-mask;
    carry: [B, T, 1], 0 where a new document starts (its state restarts from zero), None for none.
    Returns (states [B, T, D(, 2)], Newton residual as a float or None for the sequential loop)."""
    _, block = CELLS[cell_name]
    if h0 is None:
        h0 = u.new_zeros(u.shape[0], u.shape[2], *((2,) if block else ()))
    mode = resolve_mode(mode, u.device)
    if mode == "sequential" or u.shape[1] == 1:
        return rnn_sequential(cell_name, u, keep, carry, h0, params), None
    H, residual = ParaRNNFunction.apply(cell_name, mode, iters, u, keep, carry, h0, *params)
    return H, residual


# ------------------------------------------------------------------------------------------------ cache
class ParaRNNCacheLayer(LinearAttentionLayer, CacheLayerMixin):
    """Cache entry of a ParaRNN layer: the recurrent state (`recurrent_states[0]`) plus the number of tokens
    seen, so `DynamicCache.get_seq_length()` and the causal-mask sizes work for pure-RNN models too (the cache
    counts as a `CacheLayerMixin` for that; as a `LinearAttentionLayer` it is skipped when transformers
    looks for the first full-attention layer)."""

    is_sliding = False

    def __init__(self, **kwargs):
        LinearAttentionLayer.__init__(self, number_of_states=1)
        self.keys = self.values = None
        self.is_initialized = False
        self.seen_tokens = 0

    def lazy_initialization(self, *args, **kwargs) -> None:
        LinearAttentionLayer.lazy_initialization(self, *args, **kwargs)

    def update(self, key_states, value_states, *args, **kwargs):
        raise TypeError("a ParaRNN cache layer holds a recurrent state, not keys and values")

    def update_state(self, state: torch.Tensor, num_tokens: int) -> None:
        self.update_recurrent_state(state)
        self.seen_tokens += num_tokens

    @property
    def state(self) -> torch.Tensor | None:
        return self.recurrent_states[0] if self.is_recurrent_states_initialized[0] else None

    def get_seq_length(self) -> int:
        return self.seen_tokens

    def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
        return self.seen_tokens + query_length, 0

    def get_max_length(self) -> int:
        return -1

    def reset(self) -> None:
        LinearAttentionLayer.reset(self)
        self.seen_tokens = 0


class ParaGRUCacheLayer(ParaRNNCacheLayer):
    _layer_type = "pararnn_gru"


class ParaLSTMCacheLayer(ParaRNNCacheLayer):
    _layer_type = "pararnn_lstm"


# `_layer_type` registers the layers for `DynamicCache`; a recurrent state has a fixed size, so a
# `StaticCache` uses the same layers (as transformers does for its own linear-attention layers).
for _layer in (ParaGRUCacheLayer, ParaLSTMCacheLayer):
    STATIC_LAYER_TYPE_MAPPING[_layer._layer_type] = _layer


# ------------------------------------------------------------------------------------------------ mixer
def check_pararnn_config(config) -> None:
    mode = getattr(config, "pararnn_mode", "auto")
    if mode not in PARARNN_MODES:
        raise ValueError(f"pararnn_mode={mode!r} is not valid; valid choices: {list(PARARNN_MODES)}")
    iters = getattr(config, "pararnn_newton_iters", 3)
    if not isinstance(iters, int) or iters < 1:
        raise ValueError(f"pararnn_newton_iters={iters!r} must be an integer >= 1")


def padding_keep_mask(attention_mask, batch: int, length: int, past: int) -> torch.Tensor | None:
    """[B, T, 1] float, 0 at padded positions, from the 4-D mask of `create_causal_mask`: a token is padding
    iff it may not attend to itself (the diagonal entry of its row: key column `past` + row, also when a
    static cache makes the mask wider than the tokens seen)."""
    if attention_mask is None or attention_mask.dim() != 4:
        return None
    rows = torch.arange(length, device=attention_mask.device)
    diag = attention_mask[:, 0, rows, past + rows]  # [B, T]
    keep = diag if diag.dtype == torch.bool else diag == 0
    if bool(keep.all()):
        return None
    return keep.expand(batch, length).float()[..., None]


def document_carry(position_ids: torch.Tensor | None, batch: int, length: int) -> torch.Tensor | None:
    """[B, T, 1] float, 0 where a packed document starts inside the sequence (its position id restarts at 0
    after the first token), so the state does not cross documents, as attention does not; None if none
    does."""
    if position_ids is None or length < 2:
        return None
    restarts = position_ids[..., 1:] == 0
    if not bool(restarts.any()):
        return None
    carry = torch.ones(position_ids.shape[0], length, device=position_ids.device)
    carry[:, 1:] = (~restarts).float()
    return carry.expand(batch, length)[..., None]


class ParaRNNMixer(nn.Module):
    """x → in_proj → ParaRNN cell over the sequence → out_proj (the hidden state h of the cell); in a
    bidirectional backbone also reverse_in_proj → reverse cell over the reversed sequence, concatenated."""

    cell_name: str = ""

    def __init__(self, config, layer_idx: int):
        super().__init__()
        self.layer_idx = layer_idx
        self.mode = config.pararnn_mode
        self.iters = config.pararnn_newton_iters
        self.width = config.num_attention_heads * config.head_dim
        self.bidirectional = not config.is_causal
        self.in_proj = nn.Linear(config.hidden_size, 3 * self.width, bias=True)
        self.state_weight = nn.Parameter(torch.empty(3, self.width))
        if self.cell_name == "lstm":
            self.peephole = nn.Parameter(torch.empty(2, self.width))
        if self.bidirectional:
            self.reverse_in_proj = nn.Linear(config.hidden_size, 3 * self.width, bias=True)
            self.reverse_state_weight = nn.Parameter(torch.empty(3, self.width))
            if self.cell_name == "lstm":
                self.reverse_peephole = nn.Parameter(torch.empty(2, self.width))
        directions = 2 if self.bidirectional else 1
        self.out_proj = nn.Linear(directions * self.width, config.hidden_size, bias=False)
        self.last_residual: torch.Tensor | None = None
        self.init_plait_weights()

    def init_plait_weights(self) -> None:
        # diagonal state weights (and peepholes) small enough that the cell is contractive in h at init
        for prefix in ("", "reverse_") if self.bidirectional else ("",):
            init.uniform_(getattr(self, prefix + "state_weight"), -0.5, 0.5)
            if self.cell_name == "lstm":
                init.uniform_(getattr(self, prefix + "peephole"), -0.5, 0.5)

    def params(self, prefix: str = ""):
        names = ("state_weight", "peephole") if self.cell_name == "lstm" else ("state_weight",)
        return tuple(getattr(self, prefix + name) for name in names)

    def scan(self, x, in_proj: nn.Linear, params, keep, h0, carry):
        """One direction over x [B, T, hidden] from h0: the states [B, T, D(, 2)] and the Newton residual."""
        batch, length = x.shape[:2]
        u = in_proj(x).view(batch, length, 3, self.width).transpose(2, 3)  # [B, T, D, 3]
        return pararnn(
            self.cell_name, u, params, h0=h0, keep=keep, mode=self.mode, iters=self.iters, carry=carry
        )

    def forward(self, x, position_embeddings=None, attention_mask=None, cache=None, **kwargs):
        """Returns (output, None): a recurrent layer has no attention weights."""
        batch, length = x.shape[:2]
        cache = cache.layers[self.layer_idx] if cache is not None else None
        if cache is not None and self.bidirectional:
            raise ValueError("a bidirectional ParaRNN mixer has no recurrent cache; call it without one")
        keep = padding_keep_mask(
            attention_mask, batch, length, past=cache.seen_tokens if cache is not None else 0
        )
        h0 = cache.state if cache is not None else None
        carry = document_carry(kwargs.get("position_ids"), batch, length)
        states, residual = self.scan(x, self.in_proj, self.params(), keep, h0, carry)
        if cache is not None:
            cache.update_state(states[:, -1], length)
        h = states[..., 1] if self.cell_name == "lstm" else states
        if self.bidirectional:
            flipped = keep.flip(1) if keep is not None else None
            # reversed, a state restarts after each document's last token: where the next token started one
            reverse_carry = None if carry is None else torch.cat((carry[:, :1], carry[:, 1:].flip(1)), 1)
            reverse, reverse_residual = self.scan(
                x.flip(1), self.reverse_in_proj, self.params("reverse_"), flipped, None, reverse_carry
            )
            h = torch.cat((h, (reverse[..., 1] if self.cell_name == "lstm" else reverse).flip(1)), dim=-1)
            if residual is not None:
                residual = torch.maximum(residual, reverse_residual)
        if residual is not None:
            self.last_residual = residual.detach()  # a tensor: no host sync in the forward
        return self.out_proj(h.to(x.dtype)), None


@TOKEN_MIXERS.register("pararnn_gru", validate=check_pararnn_config)
class ParaGRU(ParaRNNMixer):
    cell_name = "gru"


@TOKEN_MIXERS.register("pararnn_lstm", validate=check_pararnn_config)
class ParaLSTM(ParaRNNMixer):
    cell_name = "lstm"


__all__ = [
    "ParaGRU",
    "ParaLSTM",
    "pararnn",
    "newton_solve",
    "gru_cell",
    "lstm_cell",
    "ParaRNNCacheLayer",
    "PARARNN_MODES",
]

"""SAM-Med3D's 3D ViT image encoder, with the official parameter names.

Two attention implementations share the same parameters (see the ``sam_l1dfl.model``
docstring for the conventions they reproduce):

* ``"faithful"`` pads the token grid to the attention window and computes the full
  (window³ × window³) attention with the official decomposed relative-position terms, exactly
  as the official code does.
* ``"fast"`` never materialises the padding: attention runs over the real tokens
  with ``F.scaled_dot_product_attention``, plus one *virtual key* that stands for all padded
  keys at once (value = the v bias, logit = a log-sum-exp that factorises over the
  relative-position terms).
* ``"auto"`` (default) picks one of the two per forward call from the device and the batch
  size (:func:`choose_attn_impl`): both compute the same function (equal up to float rounding,
  tested), so the choice is only about speed.  On a CPU the fast path wins at every batch (11×
  at batch 1).  On a GPU the fast path's work is tiny but made of many small kernels (the
  relative-position bias: einsums, log-sum-exps, a concatenation per windowed block), so at
  batch 1 the host's kernel launches, not the GPU, set its pace; the faithful path is a few
  large matrix products.  Measured on an H200 (bf16): batch 1 faithful 0.016 s vs fast 0.021 s;
  batch 8 fast ≈ 5× the official encoder.  Hence faithful below ``FAST_MIN_BATCH["cuda"]``.
"""

from __future__ import annotations


import torch
import torch.nn as nn
import torch.nn.functional as F
from segment_anything.modeling.common import MLPBlock

ATTN_IMPLS = ("auto", "fast", "faithful")
#: the smallest batch at which ``attn_impl="auto"`` takes the fast path, per device type (a device
#: type not listed: always fast).  ``scripts/bench_encoder.py`` prints the three paths side by side.
FAST_MIN_BATCH = {"cuda": 2}


def choose_attn_impl(device_type: str, batch: int) -> str:
    """What ``attn_impl="auto"`` runs for a batch of ``batch`` volumes on ``device_type``."""
    return "fast" if batch >= FAST_MIN_BATCH.get(device_type, 0) else "faithful"


class LayerNorm3d(nn.Module):
    """Channel LayerNorm for (B, C, X, Y, Z) tensors (official ``LayerNorm3d``, eps 1e-6)."""

    def __init__(self, num_channels: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(num_channels))
        self.bias = nn.Parameter(torch.zeros(num_channels))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mean = x.mean(1, keepdim=True)
        var = (x - mean).pow(2).mean(1, keepdim=True)
        x = (x - mean) / torch.sqrt(var + self.eps)
        return self.weight.view(-1, 1, 1, 1) * x + self.bias.view(-1, 1, 1, 1)


class PatchEmbed3D(nn.Module):
    """Non-overlapping 3D patches: Conv3d, then channels last (B, X, Y, Z, C)."""

    def __init__(self, patch_size: int, in_chans: int, embed_dim: int) -> None:
        super().__init__()
        self.proj = nn.Conv3d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).permute(0, 2, 3, 4, 1)


def _rel_table(size: int, rel_pos: torch.Tensor) -> torch.Tensor:
    """R[i, j] = rel_pos[i - j + size - 1] for query/key index i, j in one axis (size, size, C).

    Tables of another length are linearly resized first, like the official code.
    """
    length = 2 * size - 1
    if rel_pos.shape[0] != length:
        rel_pos = F.interpolate(rel_pos.t().unsqueeze(0), size=length, mode="linear").squeeze(0).t()
    idx = torch.arange(size, device=rel_pos.device)
    return rel_pos[idx[:, None] - idx[None, :] + size - 1]


def _rel_terms(q: torch.Tensor, Rd: torch.Tensor, Rh: torch.Tensor, Rw: torch.Tensor):
    """The three per-axis terms of the official (permuted) decomposed relative position.

    ``q``: (N, S0, S1, S2, C) queries of a window (unscaled); ``R*``: (S, K, C) tables.
    For a query at (a, b, c) and a key at (d, e, f) the official bias is
    ``Td[a,b,c,f] + Th[a,b,d,f] + Tw[a,b,e,f]`` with
    ``Td = q[a,b,c]·Rd[a,f]``, ``Th = q[a,b,d]·Rh[b,f]``, ``Tw = q[a,b,e]·Rw[e,f]``.
    Returns (Td, Th, Tw), each (N, S0, S1, S, K): the last index is always the key's f.
    """
    Td = torch.einsum("nabcx,afx->nabcf", q, Rd)
    Th = torch.einsum("nabdx,bfx->nabdf", q, Rh)
    Tw = torch.einsum("nabex,efx->nabef", q, Rw)
    return Td, Th, Tw


def _full_bias(Td: torch.Tensor, Th: torch.Tensor, Tw: torch.Tensor) -> torch.Tensor:
    """(N, Sq, Sk) bias from the three terms (all keys real, same grid as the queries)."""
    n, s0, s1, s2, k2 = Td.shape
    k0 = Th.shape[3]
    k1 = Tw.shape[3]
    bias = Td[:, :, :, :, None, None, :] + Th[:, :, :, None, :, None, :] + Tw[:, :, :, None, None, :, :]
    return bias.reshape(n, s0 * s1 * s2, k0 * k1 * k2)


class Attention3D(nn.Module):
    """Multi-head attention with the official decomposed 3D relative positions.

    ``input_size`` is the attention grid (the window for windowed blocks, the token grid for
    global ones); it sizes the ``rel_pos_{d,h,w}`` tables (2·size−1 rows).
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        qkv_bias: bool = True,
        use_rel_pos: bool = True,
        input_size: tuple[int, int, int] = (14, 14, 14),
    ) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.scale = self.head_dim**-0.5
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)
        self.use_rel_pos = use_rel_pos
        if use_rel_pos:
            self.rel_pos_d = nn.Parameter(torch.zeros(2 * input_size[0] - 1, self.head_dim))
            self.rel_pos_h = nn.Parameter(torch.zeros(2 * input_size[1] - 1, self.head_dim))
            self.rel_pos_w = nn.Parameter(torch.zeros(2 * input_size[2] - 1, self.head_dim))

    def _qkv(self, x: torch.Tensor):
        B, S0, S1, S2, _ = x.shape
        qkv = self.qkv(x).reshape(B, S0 * S1 * S2, 3, self.num_heads, self.head_dim)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).reshape(3, B * self.num_heads, S0 * S1 * S2, self.head_dim)
        return q, k, v

    def _out(self, o: torch.Tensor, B: int, grid: tuple[int, int, int]) -> torch.Tensor:
        S0, S1, S2 = grid
        o = o.view(B, self.num_heads, S0, S1, S2, self.head_dim).permute(0, 2, 3, 4, 1, 5)
        return self.proj(o.reshape(B, S0, S1, S2, self.num_heads * self.head_dim))

    # ------------------------------------------------------------------ faithful
    def forward_faithful(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, S0, S1, S2, C), already padded/partitioned as the official code does."""
        B, S0, S1, S2, _ = x.shape
        q, k, v = self._qkv(x)
        attn = (q * self.scale) @ k.transpose(-2, -1)
        if self.use_rel_pos:
            Rd = _rel_table(S0, self.rel_pos_d)
            Rh = _rel_table(S1, self.rel_pos_h)
            Rw = _rel_table(S2, self.rel_pos_w)
            Td, Th, Tw = _rel_terms(q.view(-1, S0, S1, S2, self.head_dim), Rd, Rh, Rw)
            attn = attn + _full_bias(Td, Th, Tw)
        attn = attn.softmax(dim=-1)
        return self._out(attn @ v, B, (S0, S1, S2))

    # ------------------------------------------------------------------ fast
    def forward_fast(self, x: torch.Tensor, window: int = 0) -> torch.Tensor:
        """x: (B, G0, G1, G2, C) real tokens only.

        ``window`` > 0: the official code would zero-pad the grid to ``window``³ (one window,
        requires G ≤ window per axis); the padded keys enter as one virtual key per query.
        ``window`` == 0: global attention over the grid, no padding.
        """
        B, G0, G1, G2, _ = x.shape
        N = B * self.num_heads
        q, k, v = self._qkv(x)
        pad = window > 0 and (G0, G1, G2) != (window, window, window)
        if not self.use_rel_pos:
            bias = None
        else:
            S = window if pad else None
            with torch.autocast(device_type=x.device.type, enabled=False):
                qf = q.float().view(N, G0, G1, G2, self.head_dim)
                if not pad:
                    Rd = _rel_table(G0, self.rel_pos_d.float())
                    Rh = _rel_table(G1, self.rel_pos_h.float())
                    Rw = _rel_table(G2, self.rel_pos_w.float())
                    bias = _full_bias(*_rel_terms(qf, Rd, Rh, Rw))
                else:
                    bias = self._padded_bias(qf, S)
            bias = bias.to(q.dtype)
        if pad:
            if not self.use_rel_pos:
                raise NotImplementedError("fast padded attention needs relative positions")
            # Virtual key: key = k bias (SDPA adds scale*q·k_bias itself), value = v bias.
            C = self.num_heads * self.head_dim
            b = self.qkv.bias if self.qkv.bias is not None else torch.zeros(3 * C, device=x.device)
            kb = b[C : 2 * C].view(1, self.num_heads, 1, self.head_dim).to(k.dtype)
            vb = b[2 * C :].view(1, self.num_heads, 1, self.head_dim).to(v.dtype)
            kb = kb.expand(B, -1, -1, -1).reshape(N, 1, self.head_dim)
            vb = vb.expand(B, -1, -1, -1).reshape(N, 1, self.head_dim)
            k = torch.cat([k, kb], dim=1)
            v = torch.cat([v, vb], dim=1)
        L = G0 * G1 * G2
        o = F.scaled_dot_product_attention(
            q.view(B, self.num_heads, L, self.head_dim),
            k.view(B, self.num_heads, -1, self.head_dim),
            v.view(B, self.num_heads, -1, self.head_dim),
            attn_mask=None if bias is None else bias.view(B, self.num_heads, L, -1),
            scale=self.scale,
        )
        return self._out(o.reshape(N, L, self.head_dim), B, (G0, G1, G2))

    def _padded_bias(self, q: torch.Tensor, S: int) -> torch.Tensor:
        """Bias over the real keys plus, as last column, the padded keys' log-sum-exp.

        ``q``: (N, G0, G1, G2, C) fp32 real queries; the official code pads them to S³ with
        zero tokens whose query is the q bias.  Only real queries are needed (padded queries
        are discarded), but the permuted formula reads q at (a, b, d) and (a, b, e), where d or
        e may index padding: those read the q bias.
        """
        N, G0, G1, G2, C = q.shape
        nh = self.num_heads
        dim = nh * C
        if self.qkv.bias is not None:
            qb = self.qkv.bias[:dim].float().view(1, nh, C).expand(N // nh, nh, C).reshape(N, C)
        else:
            qb = q.new_zeros(N, C)
        Rd = _rel_table(S, self.rel_pos_d.float())[:G0]  # (G0, S, C): query a, key f
        Rh = _rel_table(S, self.rel_pos_h.float())[:G1]  # (G1, S, C): query b, key f
        Rw = _rel_table(S, self.rel_pos_w.float())  # (S, S, C): q index e, key f
        # Queries along the last axis extended to the padded window: q[a, b, x], x < S.
        q_ext = torch.cat([q, qb.view(N, 1, 1, 1, C).expand(N, G0, G1, S - G2, C)], dim=3)
        Td = torch.einsum("nabcx,afx->nabcf", q, Rd)  # (N, G0, G1, G2, S)  key f
        Th = torch.einsum("nabdx,bfx->nabdf", q_ext, Rh)  # (N, G0, G1, S, S) key d, f
        Tw = torch.einsum("nabex,efx->nabef", q_ext, Rw)  # (N, G0, G1, S, S) key e, f
        # Real keys: d < G0, e < G1, f < G2.
        real = (
            Td[:, :, :, :, None, None, :G2]
            + Th[:, :, :, None, :G0, None, :G2]
            + Tw[:, :, :, None, None, :G1, :G2]
        ).reshape(N, G0 * G1 * G2, G0 * G1 * G2)
        # Padded keys: {d >= G0} ∪ {d < G0, e >= G1} ∪ {d < G0, e < G1, f >= G2}.  For a fixed
        # key f, exp(Td[f] + Th[d, f] + Tw[e, f]) summed over a box of (d, e) factorises into
        # exp(Td[f]) (sum_d exp Th) (sum_e exp Tw): small log-sum-exps over d and e.
        neg_inf = torch.full_like(Th[..., 0, :], float("-inf"))
        h_lo = torch.logsumexp(Th[..., :G0, :], dim=-2)  # (N, G0, G1, S(f))
        h_hi = torch.logsumexp(Th[..., G0:, :], dim=-2) if S > G0 else neg_inf
        w_all = torch.logsumexp(Tw, dim=-2)
        w_lo = torch.logsumexp(Tw[..., :G1, :], dim=-2)
        w_hi = torch.logsumexp(Tw[..., G1:, :], dim=-2) if S > G1 else neg_inf
        f_pad = torch.arange(S, device=q.device) >= G2
        third = torch.where(f_pad, h_lo + w_lo, neg_inf)
        per_f = torch.logsumexp(torch.stack([h_hi + w_all, h_lo + w_hi, third], dim=-1), dim=-1)
        lse = torch.logsumexp(Td + per_f[:, :, :, None, :], dim=-1)  # (N, G0, G1, G2)
        return torch.cat([real, lse.reshape(N, G0 * G1 * G2, 1)], dim=-1)


def window_partition3d(x: torch.Tensor, window: int) -> tuple[torch.Tensor, tuple[int, int, int]]:
    """Zero-pad (B, D, H, W, C) to multiples of ``window`` and split into windows."""
    B, D, H, W, C = x.shape
    pd, ph, pw = ((window - s % window) % window for s in (D, H, W))
    if pd or ph or pw:
        x = F.pad(x, (0, 0, 0, pw, 0, ph, 0, pd))
    Dp, Hp, Wp = D + pd, H + ph, W + pw
    x = x.view(B, Dp // window, window, Hp // window, window, Wp // window, window, C)
    windows = x.permute(0, 1, 3, 5, 2, 4, 6, 7).reshape(-1, window, window, window, C)
    return windows, (Dp, Hp, Wp)


def window_unpartition3d(
    windows: torch.Tensor, window: int, padded: tuple[int, int, int], size: tuple[int, int, int]
) -> torch.Tensor:
    Dp, Hp, Wp = padded
    D, H, W = size
    B = windows.shape[0] // ((Dp // window) * (Hp // window) * (Wp // window))
    x = windows.view(B, Dp // window, Hp // window, Wp // window, window, window, window, -1)
    x = x.permute(0, 1, 4, 2, 5, 3, 6, 7).reshape(B, Dp, Hp, Wp, -1)
    return x[:, :D, :H, :W, :].contiguous()


class Block3D(nn.Module):
    """Pre-norm transformer block; ``window_size`` 0 means global attention."""

    def __init__(
        self,
        dim: int,
        num_heads: int,
        mlp_ratio: float,
        window_size: int,
        input_size: tuple[int, int, int],
        use_rel_pos: bool = True,
        eps: float = 1e-6,
    ) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=eps)
        attn_size = input_size if window_size == 0 else (window_size,) * 3
        self.attn = Attention3D(dim, num_heads, qkv_bias=True, use_rel_pos=use_rel_pos, input_size=attn_size)
        self.norm2 = nn.LayerNorm(dim, eps=eps)
        self.mlp = MLPBlock(embedding_dim=dim, mlp_dim=int(dim * mlp_ratio), act=nn.GELU)
        self.window_size = window_size
        self.attn_impl = "auto"

    def _attend(self, x: torch.Tensor) -> torch.Tensor:
        w = self.window_size
        D, H, W = x.shape[1:4]
        single_window = w > 0 and D <= w and H <= w and W <= w
        impl = choose_attn_impl(x.device.type, x.shape[0]) if self.attn_impl == "auto" else self.attn_impl
        if impl == "fast" and (w == 0 or (single_window and self.attn.use_rel_pos)):
            return self.attn.forward_fast(x, window=w)
        if w > 0:
            xw, padded = window_partition3d(x, w)
            return window_unpartition3d(self.attn.forward_faithful(xw), w, padded, (D, H, W))
        return self.attn.forward_faithful(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self._attend(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class ImageEncoderViT3D(nn.Module):
    """(B, in_chans, S, S, S) → (B, out_chans, S/16, S/16, S/16)."""

    def __init__(
        self,
        img_size: int = 128,
        patch_size: int = 16,
        in_chans: int = 1,
        embed_dim: int = 768,
        depth: int = 12,
        num_heads: int = 12,
        mlp_ratio: float = 4.0,
        out_chans: int = 384,
        use_rel_pos: bool = True,
        window_size: int = 14,
        global_attn_indexes: "tuple[int, ...] | list[int]" = (2, 5, 8, 11),
        eps: float = 1e-6,
        attn_impl: str = "auto",
    ) -> None:
        super().__init__()
        self.img_size = img_size
        grid = img_size // patch_size
        self.patch_embed = PatchEmbed3D(patch_size, in_chans, embed_dim)
        self.pos_embed = nn.Parameter(torch.zeros(1, grid, grid, grid, embed_dim))
        self.blocks = nn.ModuleList(
            Block3D(
                embed_dim,
                num_heads,
                mlp_ratio,
                window_size=0 if i in global_attn_indexes else window_size,
                input_size=(grid, grid, grid),
                use_rel_pos=use_rel_pos,
                eps=eps,
            )
            for i in range(depth)
        )
        self.neck = nn.Sequential(
            nn.Conv3d(embed_dim, out_chans, kernel_size=1, bias=False),
            LayerNorm3d(out_chans),
            nn.Conv3d(out_chans, out_chans, kernel_size=3, padding=1, bias=False),
            LayerNorm3d(out_chans),
        )
        self.attn_impl = attn_impl

    @property
    def attn_impl(self) -> str:
        return self._attn_impl

    @attn_impl.setter
    def attn_impl(self, value: str) -> None:
        if value not in ATTN_IMPLS:
            raise ValueError(f"attn_impl must be one of {ATTN_IMPLS}, got {value!r}")
        self._attn_impl = value
        for blk in self.blocks:
            blk.attn_impl = value

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(x) + self.pos_embed
        for blk in self.blocks:
            x = blk(x)
        return self.neck(x.permute(0, 4, 1, 2, 3))

"""Look-twice selector (Anomaly-OV's LTFM idea, simplified).

First look: the expert's significance map (anomaly map / threshold, pooled to the token grid) weights the
visual tokens; the most suspicious tokens are pooled into `n_queries` query tokens that attend over all
weighted tokens plus the global token with one cross-attention head. Output: n_queries + 1 tokens
(the queries and the global token). Second look: `features.suspicious_crop` gives the box of the most
suspicious region; the LVLM re-encodes that crop and appends its tokens after these.
"""
from __future__ import annotations

import math

import torch
from torch import nn


class LookTwice(nn.Module):
    def __init__(self, dim: int, n_queries: int = 4):
        super().__init__()
        if n_queries < 1:
            raise ValueError(f"n_queries: expected >= 1, got {n_queries}")
        self.dim, self.n_queries = dim, n_queries
        self.sig_scale = nn.Parameter(torch.tensor(1.0))  # how strongly significance amplifies tokens
        self.q = nn.Linear(dim, dim)
        self.k = nn.Linear(dim, dim)
        self.v = nn.Linear(dim, dim)
        self.o = nn.Linear(dim, dim)
        self.norm = nn.LayerNorm(dim)
        nn.init.zeros_(self.o.weight)
        nn.init.zeros_(self.o.bias)  # starts as plain pooling of the suspicious tokens

    @property
    def n_tokens(self) -> int:
        return self.n_queries + 1

    def select(self, significance: torch.Tensor) -> torch.Tensor:
        """Indices (B, n_queries, g) of the top suspicious tokens, grouped g per query, most suspicious first."""
        n = significance.shape[1]
        g = max(1, min(n // self.n_queries, max(1, n // (4 * self.n_queries))))
        k = g * self.n_queries
        if k > n:
            raise ValueError(f"look-twice: {n} tokens cannot feed {self.n_queries} queries")
        idx = significance.topk(k, dim=1).indices  # (B, k)
        return idx.view(-1, self.n_queries, g)

    def forward(self, tokens: torch.Tensor, significance: torch.Tensor, global_token: torch.Tensor) -> torch.Tensor:
        """tokens (B, N, D), significance (B, N) >= 0 (1 = threshold), global_token (B, D)
        -> (B, n_queries + 1, D)."""
        shapes_ok = (tokens.dim() == 3 and significance.shape == tokens.shape[:2]
                     and global_token.shape == (tokens.shape[0], tokens.shape[2]))
        if not shapes_ok:
            raise ValueError(f"look-twice: expected tokens (B, N, D), significance (B, N), global (B, D); got "
                             f"{tuple(tokens.shape)}, {tuple(significance.shape)}, {tuple(global_token.shape)}")
        b, _, d = tokens.shape
        sig = significance.clamp(0, 4).to(tokens.dtype)  # (B, N)
        weighted = tokens * (1 + self.sig_scale * sig).unsqueeze(-1)  # (B, N, D)
        idx = self.select(sig)  # (B, Q, g)
        flat = idx.reshape(b, -1)
        sel = weighted.gather(1, flat.unsqueeze(-1).expand(-1, -1, d))  # (B, Q * g, D)
        sel = sel.view(b, self.n_queries, -1, d)  # (B, Q, g, D)
        w = sig.gather(1, flat).view(b, self.n_queries, -1).softmax(-1).unsqueeze(-1)  # (B, Q, g, 1)
        queries = (sel * w).sum(2)  # (B, Q, D)
        kv = torch.cat([weighted, global_token.unsqueeze(1).to(tokens.dtype)], dim=1)  # (B, N + 1, D)
        att = (self.q(queries) @ self.k(kv).transpose(1, 2)) / math.sqrt(d)  # (B, Q, N + 1)
        out = queries + self.o(att.softmax(-1) @ self.v(kv))  # (B, Q, D)
        return torch.cat([self.norm(out), global_token.unsqueeze(1).to(out.dtype)], dim=1)  # (B, Q + 1, D)


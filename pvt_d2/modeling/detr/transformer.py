"""DETR's encoder-decoder transformer (Carion et al., 2020) and its sine positional encoding.

Post-norm layers (sub-layer -> dropout -> residual add -> LayerNorm), ReLU feed-forward networks, positional
encodings added to the queries and keys (never the values) of every attention, learned object queries that the
decoder refines from zeros, and a final LayerNorm applied to every decoder layer's output. Attention is torch's
``nn.MultiheadAttention`` called with ``need_weights=False``, which runs ``F.scaled_dot_product_attention``; padded
positions of the image are removed from every attention's keys with ``key_padding_mask``.

Tensors are batch-first: a feature map (B, C, H, W) is attended as a sequence (B, H*W, C).
"""
from __future__ import annotations

import copy
import math
from typing import Optional, Tuple

import torch
from torch import nn
from torch.nn import functional as F

__all__ = ["SinePositionalEncoding", "Transformer", "TransformerEncoderLayer", "TransformerDecoderLayer"]


class SinePositionalEncoding(nn.Module):
    """The 2-D sine/cosine encoding of pixel positions, counted over the unpadded pixels only.

    For a pixel at row y, column x (1-based, counting valid pixels), with normalization the coordinates become
    ``y / H_valid * scale`` and ``x / W_valid * scale`` (so they span (0, scale] for any image size), then each is
    encoded as ``sin(c / T**(2i/F)), cos(c / T**(2i/F))`` interleaved for i < F/2; output channels are the F
    y-features followed by the F x-features. Padded pixels get the encoding of coordinate 0 (they are never
    attended).

    Args:
        num_pos_feats: F, channels per axis (the output has 2F channels: hidden_dim / 2 for DETR).
        temperature: T, the wavelength base.
        normalize: divide the coordinates by the valid height / width.
        scale: the range of the normalized coordinates (2 pi in DETR).
    """

    def __init__(self, num_pos_feats: int = 128, temperature: float = 10000.0, normalize: bool = True,
                 scale: float = 2 * math.pi):
        super().__init__()
        if num_pos_feats % 2:
            raise ValueError(f"num_pos_feats must be even (sin/cos pairs), got {num_pos_feats}")
        self.num_pos_feats = num_pos_feats
        self.temperature = temperature
        self.normalize = normalize
        self.scale = scale

    def forward(self, mask: torch.Tensor) -> torch.Tensor:
        """(B, H, W) bool padding mask (True = padded) -> (B, 2F, H, W) float32 encoding."""
        not_mask = (~mask).float()
        y = not_mask.cumsum(1)
        x = not_mask.cumsum(2)
        if self.normalize:
            eps = 1e-6
            y = y / (y[:, -1:, :] + eps) * self.scale
            x = x / (x[:, :, -1:] + eps) * self.scale
        i = torch.arange(self.num_pos_feats, dtype=torch.float32, device=mask.device)
        dim_t = self.temperature ** (2 * torch.div(i, 2, rounding_mode="floor") / self.num_pos_feats)
        pos_x = x[..., None] / dim_t
        pos_y = y[..., None] / dim_t
        pos_x = torch.stack([pos_x[..., 0::2].sin(), pos_x[..., 1::2].cos()], dim=4).flatten(3)
        pos_y = torch.stack([pos_y[..., 0::2].sin(), pos_y[..., 1::2].cos()], dim=4).flatten(3)
        return torch.cat([pos_y, pos_x], dim=3).permute(0, 3, 1, 2)


def _with_pos(x: torch.Tensor, pos: Optional[torch.Tensor]) -> torch.Tensor:
    return x if pos is None else x + pos


class TransformerEncoderLayer(nn.Module):
    """Self-attention over the image tokens, then a feed-forward network; post-norm.

    Args:
        d_model: token channels. nhead: attention heads. dim_feedforward: FFN hidden channels.
        dropout: dropout probability after attention, inside and after the FFN (and on attention weights).
    """

    def __init__(self, d_model: int, nhead: int, dim_feedforward: int = 2048, dropout: float = 0.1):
        super().__init__()
        self.self_attn = nn.MultiheadAttention(d_model, nhead, dropout=dropout, batch_first=True)
        self.linear1 = nn.Linear(d_model, dim_feedforward)
        self.linear2 = nn.Linear(dim_feedforward, d_model)
        self.norm1 = nn.LayerNorm(d_model)
        self.norm2 = nn.LayerNorm(d_model)
        self.dropout = nn.Dropout(dropout)
        self.dropout1 = nn.Dropout(dropout)
        self.dropout2 = nn.Dropout(dropout)

    def forward(self, src: torch.Tensor, key_padding_mask: Optional[torch.Tensor],
                pos: Optional[torch.Tensor]) -> torch.Tensor:
        """src, pos: (B, N, C); key_padding_mask: (B, N) bool, True = padded (not attended)."""
        q = k = _with_pos(src, pos)
        attn = self.self_attn(q, k, src, key_padding_mask=key_padding_mask, need_weights=False)[0]
        src = self.norm1(src + self.dropout1(attn))
        ffn = self.linear2(self.dropout(F.relu(self.linear1(src))))
        return self.norm2(src + self.dropout2(ffn))


class TransformerDecoderLayer(nn.Module):
    """Self-attention among the object queries, cross-attention to the image tokens, a feed-forward network.

    Args: as ``TransformerEncoderLayer``.
    """

    def __init__(self, d_model: int, nhead: int, dim_feedforward: int = 2048, dropout: float = 0.1):
        super().__init__()
        self.self_attn = nn.MultiheadAttention(d_model, nhead, dropout=dropout, batch_first=True)
        self.cross_attn = nn.MultiheadAttention(d_model, nhead, dropout=dropout, batch_first=True)
        self.linear1 = nn.Linear(d_model, dim_feedforward)
        self.linear2 = nn.Linear(dim_feedforward, d_model)
        self.norm1 = nn.LayerNorm(d_model)
        self.norm2 = nn.LayerNorm(d_model)
        self.norm3 = nn.LayerNorm(d_model)
        self.dropout = nn.Dropout(dropout)
        self.dropout1 = nn.Dropout(dropout)
        self.dropout2 = nn.Dropout(dropout)
        self.dropout3 = nn.Dropout(dropout)

    def forward(self, tgt: torch.Tensor, memory: torch.Tensor, memory_key_padding_mask: Optional[torch.Tensor],
                pos: Optional[torch.Tensor], query_pos: torch.Tensor) -> torch.Tensor:
        """tgt, query_pos: (B, Q, C); memory, pos: (B, N, C); memory_key_padding_mask: (B, N), True = padded."""
        q = k = _with_pos(tgt, query_pos)
        attn = self.self_attn(q, k, tgt, need_weights=False)[0]
        tgt = self.norm1(tgt + self.dropout1(attn))
        attn = self.cross_attn(_with_pos(tgt, query_pos), _with_pos(memory, pos), memory,
                               key_padding_mask=memory_key_padding_mask, need_weights=False)[0]
        tgt = self.norm2(tgt + self.dropout2(attn))
        ffn = self.linear2(self.dropout(F.relu(self.linear1(tgt))))
        return self.norm3(tgt + self.dropout3(ffn))


class Transformer(nn.Module):
    """DETR's transformer: encoder over the image tokens, decoder from learned object queries.

    ``forward(src, mask, pos)`` returns ``(hs, memory)``: ``hs`` (L, B, Q, C) the final-LayerNorm-ed outputs of the
    L decoder layers (all of them, for auxiliary losses; the last is the prediction), ``memory`` (B, C, H, W) the
    encoder output.

    Args:
        d_model: channels of tokens and queries (DETR: 256).
        nhead: attention heads (8).
        num_encoder_layers: encoder layers (6); 0 attends the decoder to the projected features directly.
        num_decoder_layers: decoder layers (6), at least 1.
        dim_feedforward: FFN hidden channels (2048).
        dropout: dropout probability (0.1).
        num_queries: learned object queries (100): the most objects one image can be given.

    The queries are the parameter ``query_embed`` (num_queries, d_model), so that optimizer rules about
    embeddings (``SOLVER.WEIGHT_DECAY_EMBED``) find it by name. Weights of dimension > 1 are Xavier-uniform
    initialized, the queries standard normal.
    """

    def __init__(self, d_model: int = 256, nhead: int = 8, num_encoder_layers: int = 6, num_decoder_layers: int = 6,
                 dim_feedforward: int = 2048, dropout: float = 0.1, num_queries: int = 100):
        super().__init__()
        if d_model % nhead:
            raise ValueError(f"d_model ({d_model}) must be divisible by nhead ({nhead})")
        if num_decoder_layers < 1 or num_encoder_layers < 0:
            raise ValueError(f"need >= 0 encoder and >= 1 decoder layers, got {num_encoder_layers} and "
                             f"{num_decoder_layers}")
        if num_queries < 1:
            raise ValueError(f"num_queries must be >= 1, got {num_queries}")
        enc = TransformerEncoderLayer(d_model, nhead, dim_feedforward, dropout)
        dec = TransformerDecoderLayer(d_model, nhead, dim_feedforward, dropout)
        self.encoder_layers = nn.ModuleList(copy.deepcopy(enc) for _ in range(num_encoder_layers))
        self.decoder_layers = nn.ModuleList(copy.deepcopy(dec) for _ in range(num_decoder_layers))
        self.decoder_norm = nn.LayerNorm(d_model)
        self.query_embed = nn.Parameter(torch.empty(num_queries, d_model))
        self.d_model, self.nhead, self.num_queries = d_model, nhead, num_queries
        self._reset_parameters()

    def _reset_parameters(self) -> None:
        for p in self.parameters():
            if p.dim() > 1:
                nn.init.xavier_uniform_(p)
        nn.init.normal_(self.query_embed)

    def forward(self, src: torch.Tensor, mask: torch.Tensor, pos: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """src: (B, C, H, W) features; mask: (B, H, W) bool, True = padded; pos: (B, C, H, W) encoding."""
        b, c, h, w = src.shape
        src = src.flatten(2).transpose(1, 2)
        pos = pos.flatten(2).transpose(1, 2).to(src.dtype)
        mask = mask.flatten(1)
        memory = src
        for layer in self.encoder_layers:
            memory = layer(memory, mask, pos)
        query_pos = self.query_embed.to(src.dtype).unsqueeze(0).expand(b, -1, -1)
        tgt = torch.zeros_like(query_pos)
        hs = []
        for layer in self.decoder_layers:
            tgt = layer(tgt, memory, mask, pos, query_pos)
            hs.append(self.decoder_norm(tgt))
        return torch.stack(hs), memory.transpose(1, 2).reshape(b, c, h, w)

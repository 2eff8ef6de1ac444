"""ImageNet classifiers on the PVT stages, with the authors' classification parameter names (``head``, v1 ``cls_token``
and ``norm``), so their released checkpoints load into ``PVTClassifier`` as they are (after
``pvt_d2.checkpoint.to_pvt_state_dict(sd, drop_classifier=False)``)."""
from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from .pvt import PVT

__all__ = ["PVTClassifier"]


class PVTClassifier(PVT):
    """A PVT with a classification head.

    v1: a learnable cls token (plus row 0 of stage 4's position embedding) is prepended to the stage-4 tokens; after
    stage 4 a LayerNorm (eps 1e-6) and a Linear head read the cls token. v2: the mean of the stage-4 tokens after the
    stage-4 norm feeds a Linear head.

    Args:
        arch: a name in ``PVT_ARCHS``, or None with explicit spec fields (see ``PVT``).
        num_classes: outputs of the head; 0 replaces the head by an identity (``forward`` returns features).
        drop_path_rate, checkpoint_activations, in_chans, pretrain_img_size, **spec: see ``PVT``.
    """

    def __init__(self, arch: Optional[str] = "pvt_v2_b0", num_classes: int = 1000, *, drop_path_rate: float = 0.0,
                 checkpoint_activations: bool = False, in_chans: int = 3, pretrain_img_size: int = 224, **spec):
        super().__init__(arch, drop_path_rate=drop_path_rate, out_indices=(3,),
                         checkpoint_activations=checkpoint_activations, in_chans=in_chans,
                         pretrain_img_size=pretrain_img_size, **spec)
        dim = self.embed_dims[3]
        if self.version == 1 and self.spec.sr_ratios[3] != 1:
            raise ValueError(f"a v1 classifier needs sr_ratios[3] == 1 (cls token), got {self.spec.sr_ratios}")
        if self.version == 1:
            self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
            self.norm = nn.LayerNorm(dim, eps=1e-6)
            nn.init.trunc_normal_(self.cls_token, std=0.02)
        self.num_classes = num_classes
        self.head = nn.Linear(dim, num_classes) if num_classes > 0 else nn.Identity()
        if num_classes > 0:
            nn.init.trunc_normal_(self.head.weight, std=0.02)
            nn.init.zeros_(self.head.bias)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Images (B, 3, H, W) -> pooled features (B, C4): the v1 cls token or the v2 token mean."""
        for i in range(3):
            x = self.forward_stage(i, x)
        if self.version == 2:
            x, h, w = self.embed(3, x)
            return self.norm4(self.run_blocks(3, x, h, w)).mean(dim=1)
        x, h, w = self.embed(3, x)
        cls = (self.cls_token + self.pos_embed4[:, :1]).expand(x.shape[0], -1, -1)
        x = self.run_blocks(3, torch.cat((cls, x), dim=1), h, w)  # stage 4 (sr 1, v1 FFN) never reshapes tokens
        return self.norm(x[:, 0])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.forward_features(x))

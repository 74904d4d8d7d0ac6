"""``uda_vae_pp``: UDA-VAE++ (Lu, Zheng, Gupta, CVPRW 2022): VarDA + structure mutual information.

Everything of :mod:`~CardiacUDALib.methods.varda`, with two changes:

* **sequential reparameterisation**: each scale's sampled latent is what the decoder carries on to
  the next scale (VarDA's branches are parallel);
* **SMIE** (``nets.structure_mi``), one block per domain, maximising the mutual information between
  the domain's segmentation (logits at three scales) and its reconstructions:
  L_MI = -(alpha I_global + beta I_local + gamma I_prior) with alpha, beta, gamma = 0.5, 1.0, 0.1
  (Eq. 1-3, 11), added as c3 * L_MI per domain to the total of Eq. 12 (c1..c4 = 1e-2, 1, 1e-1, 1e-5).
  As in the paper's single total loss (and the released code), the estimators are stepped by their
  own Adam on the same loss as the networks: no min-max game.

``smie=False`` is the ablation (VarDA with sequential reparameterisation). Released-code behaviour
available as switches: ``smie_released_mixup`` (the target block reads the *source* 1/2-scale
reconstruction) and ``smie_prior_noise="uniform"`` (the paper's prior is a standard normal). The
paper's Eq. 12 has a target segmentation term, which needs target labels: there is none here.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from CardiacUDALib.methods.registry import register_method
from CardiacUDALib.methods.varda import DomainPass, VarDA, VarDAConfig
from CardiacUDALib.nets.structure_mi import StructureMIEstimator


@dataclass
class UDAVAEPPConfig(VarDAConfig):
    sequential_reparameterisation: bool = True
    smie: bool = True  # False: the ablation without structure mutual information
    mutual_information_weight: float = 0.1  # c3 of Eq. 12
    mi_global_weight: float = 0.5  # alpha of Eq. 11
    mi_local_weight: float = 1.0  # beta
    mi_prior_weight: float = 0.1  # gamma
    smie_grid: int = 20  # maps are pooled to grid x grid before the critics' linear layers
    smie_prior_noise: str = "normal"  # Eq. 11: standard normal; released code: "uniform"
    smie_released_mixup: bool = False  # True: the target SMIE reads the source 1/2 reconstruction (code bug)


@register_method
class UDAVAEPP(VarDA):
    key = "uda_vae_pp"
    description = (
        "UDA-VAE++: VarDA with sequential reparameterisation and segmentation-reconstruction MI maximisation."
    )
    config_class = UDAVAEPPConfig
    presets = {"paper": {}, "fast": {**VarDA.presets["fast"], "smie_grid": 10}}

    def __init__(self, config: UDAVAEPPConfig, num_classes: int, device: torch.device) -> None:
        super().__init__(config, num_classes, device)
        self.estimators: nn.ModuleDict | None = None
        if config.smie:
            self.estimators = nn.ModuleDict(
                {
                    domain: StructureMIEstimator(
                        num_classes, config.context_slices, config.smie_grid, config.smie_prior_noise
                    )
                    for domain in ("source", "target")
                }
            ).to(device)
            self.estimator_optimizer = self.adam([self.estimators])

    def networks(self) -> dict[str, nn.Module]:
        extra = {} if self.estimators is None else {"estimators": self.estimators}
        return {**super().networks(), **extra}

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        extra = {} if self.estimators is None else {"estimators": self.estimator_optimizer}
        return {**super().optimizers(), **extra}

    def structure_mi_loss(self, domain: str, seen: DomainPass, source: DomainPass) -> torch.Tensor:
        """Eq. 11 for one domain: -(alpha I_global + beta I_local + gamma I_prior)."""
        config = self.config
        reconstructions = [logits.sigmoid() for logits in seen.reconstruction_logits]
        if domain == "target" and config.smie_released_mixup:
            reconstructions[1] = source.reconstruction_logits[1].sigmoid()
        estimate = self.estimators[domain](seen.output.scale_logits, reconstructions)
        return -(
            config.mi_global_weight * estimate.global_mi
            + config.mi_local_weight * estimate.local_mi
            + config.mi_prior_weight * estimate.prior
        )

    def extra_losses(self, source: DomainPass, target: DomainPass) -> dict[str, torch.Tensor]:
        if self.estimators is None:
            return {}
        mi = self.structure_mi_loss("source", source, source) + self.structure_mi_loss(
            "target", target, source
        )
        return {"mutual_information": self.config.mutual_information_weight * mi}

"""``varda``: unsupervised domain adaptation with variational approximation (Wu & Zhuang, TMI 2021).

One variational U-Net (``nets.variational``) encodes both domains into Gaussian posteriors at three
decoder scales; segmentation heads read the latents, and per-domain, per-scale decoders reconstruct
the image from the latent and a class map (the source's one-hot label, the target's prediction).
Adaptation comes from pulling the two domains' posteriors together with a closed-form kernel
discrepancy. Losses, with the weights of UDA-VAE++'s Eq. 12 (c1..c4; the code's weights divided by
its segmentation weight 1e3):

* ``segmentation`` = c2 * class-balanced CE on the source, summed over the fused, full, 1/2 and 1/4
  outputs (labels nearest-downsampled);
* ``reconstruction`` = c1 * BCE of each domain's reconstructions at three scales (Eq. 6);
* ``kl`` = c1 * ``kl_weight`` * KL of each domain's posteriors to N(0, I) (Eq. 5; Eq. 7 adds it to the
  BCE with weight 1; the released code's weight corresponds to 0.1);
* ``discrepancy`` = c4 * sum over scales of w_s * D(q_source, q_target) (Eq. 9-10; w = 1, 1, 0.1 for the
  full, 1/2 and 1/4 scales as ``code/general``).

Images must lie in [0, 1] for the BCE: the method asks for min-max intensity, and the data's
intensity jitter is off (``augment=False``, as VarDA); reconstruction targets are clipped to [0, 1]
should augmentation be switched on. Training uses random ``crop_size`` crops of each slice (160 of
192, source and target independently); inference runs on the whole slice. Learning rate x0.9 per
epoch of ``iterations_per_epoch`` steps.

Where the parts of :class:`VarDA` differ for ``uda_vae_pp`` and ``cmevae``, they subclass it and add
their terms in :meth:`VarDA.extra_losses`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from CardiacUDALib.data import SliceBatch
from CardiacUDALib.losses.variational import (
    class_balanced_cross_entropy,
    gaussian_kernel_discrepancy,
    gaussian_kl,
)
from CardiacUDALib.methods.base import AdaptationMethod, MethodConfig
from CardiacUDALib.methods.registry import register_method
from CardiacUDALib.nets.blocks import pad_to_multiple
from CardiacUDALib.nets.variational import ReconstructionDecoders, VariationalOutput, VariationalUNet


@dataclass
class VarDAConfig(MethodConfig):
    iterations: int = 3900  # 30 epochs of 130 steps (one epoch = min(#source, #target) slices / batch)
    batch_size: int = 12
    learning_rate: float = 1e-4
    lr_schedule: str = "epoch_decay"  # lr x 0.9 per epoch; also "poly" or "constant"
    iterations_per_epoch: int = 130
    intensity: str | None = "minmax"  # the BCE reconstruction needs images in [0, 1]
    augment: bool = False  # VarDA: random crops only
    validate_every: int = 130
    checkpoint_every: int = 130
    width: int = 64
    depth: int = 4
    norm: str = "instance"
    dropout: float = 0.0
    weight_decay: float = 1e-5
    crop_size: int | None = 160  # random training crops (None: the whole slice); multiples of 2**depth
    sequential_reparameterisation: bool = False  # True: UDA-VAE++
    reconstruction_width: int = 64
    segmentation_weight: float = 1.0  # c2 of Eq. 12
    reconstruction_weight: float = 1e-2  # c1 of Eq. 12, on L_recon = KL + BCE (Eq. 7)
    kl_weight: float = 1.0  # KL's weight inside L_recon (Eq. 7: 1; released code: 0.1)
    discrepancy_weight: float = 1e-5  # c4 of Eq. 12
    discrepancy_scale_weights: tuple[float, float, float] = (1.0, 1.0, 0.1)  # full, 1/2, 1/4
    discrepancy_pool: int = 4  # posteriors average-pooled 4x4 before the kernel (VarDA code)
    fractions: ClassVar[frozenset[str]] = MethodConfig.fractions | {"dropout"}


@dataclass
class DomainPass:
    """One domain's forward pass: labels (source), outputs, reconstruction logits and targets (finest first)."""

    labels: torch.Tensor | None
    output: VariationalOutput
    reconstruction_logits: list[torch.Tensor]
    reconstruction_targets: list[torch.Tensor]


def downsample_labels(labels: torch.Tensor, scale: int) -> torch.Tensor:
    """Nearest-neighbour labels at 1 / 2**scale resolution."""
    step = 2**scale
    return labels[:, step // 2 :: step, step // 2 :: step] if step > 1 else labels


@register_method
class VarDA(AdaptationMethod):
    key = "varda"
    description = "VarDA: variational U-Net, per-domain reconstructions, kernel discrepancy between the domains' posteriors."
    config_class = VarDAConfig
    presets = {
        "paper": {},
        "fast": {
            "iterations": 150,
            "batch_size": 6,
            "learning_rate": 1e-3,
            "iterations_per_epoch": 30,
            "width": 8,
            "reconstruction_width": 8,
            "crop_size": 80,
            "validate_every": 50,
            "checkpoint_every": 50,
        },
    }

    def __init__(self, config: VarDAConfig, num_classes: int, device: torch.device) -> None:
        super().__init__(config, num_classes, device)
        self.network = VariationalUNet(
            config.context_slices,
            num_classes,
            config.width,
            config.depth,
            config.norm,
            config.dropout,
            config.sequential_reparameterisation,
        ).to(device)
        self.reconstructors = ReconstructionDecoders(
            self.network.latent_channels, num_classes, config.context_slices, config.reconstruction_width
        ).to(device)
        self.optimizer = self.adam([self.network, self.reconstructors])

    def adam(self, networks: list[nn.Module]) -> torch.optim.Adam:
        parameters = [p for network in networks for p in network.parameters()]
        return torch.optim.Adam(
            parameters, lr=self.config.learning_rate, weight_decay=self.config.weight_decay
        )

    def networks(self) -> dict[str, nn.Module]:
        return {"network": self.network, "reconstructors": self.reconstructors}

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return {"network": self.optimizer}

    def learning_rate_factor(self, step: int) -> float:
        if self.config.lr_schedule == "epoch_decay":  # lr x 0.9 after every epoch (VarDA, UDA-VAE++)
            return 0.9 ** (step // max(self.config.iterations_per_epoch, 1))
        return super().learning_rate_factor(step)

    # ---- data ----------------------------------------------------------------------------------
    def crop_size(self, height: int, width: int) -> int:
        """The configured crop, at most the slice, rounded down to a multiple of 2**depth."""
        multiple = 2**self.config.depth
        size = min(self.config.crop_size or max(height, width), height, width)
        return max(multiple, size // multiple * multiple)

    def random_crop(
        self, images: torch.Tensor, labels: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """An independent random ``crop_size`` square of every slice (label cropped alike)."""
        height, width = images.shape[-2:]
        size = self.crop_size(height, width)
        tops = torch.randint(0, height - size + 1, (len(images),)).tolist()
        lefts = torch.randint(0, width - size + 1, (len(images),)).tolist()
        cropped = torch.stack(
            [image[..., t : t + size, s : s + size] for image, t, s in zip(images, tops, lefts)]
        )
        if labels is None:
            return cropped, None
        return cropped, torch.stack(
            [label[t : t + size, s : s + size] for label, t, s in zip(labels, tops, lefts)]
        )

    # ---- forward -------------------------------------------------------------------------------
    def domain_pass(self, domain: str, images: torch.Tensor, labels: torch.Tensor | None) -> DomainPass:
        """Segment and reconstruct one domain; the class map is the label (source) or the prediction (target)."""
        output = self.network(images)
        logits, targets = [], []
        for scale, (latent, scale_logits) in enumerate(zip(output.latents, output.scale_logits)):
            if labels is None:
                class_map = scale_logits.softmax(dim=1)
            else:
                class_map = F.one_hot(downsample_labels(labels, scale), self.num_classes).permute(0, 3, 1, 2)
            logits.append(self.reconstructors(domain, scale, latent.sample, class_map))
            targets.append(F.avg_pool2d(images, 2**scale).clamp(0.0, 1.0))  # kernel 1 at full scale
        return DomainPass(labels, output, logits, targets)

    # ---- losses --------------------------------------------------------------------------------
    def segmentation_loss(self, source: DomainPass) -> torch.Tensor:
        """Class-balanced CE of the fused output and of every scale's head (deep supervision)."""
        output = source.output
        loss = class_balanced_cross_entropy(output.fused_logits, source.labels)
        for scale, logits in enumerate(output.scale_logits):
            loss = loss + class_balanced_cross_entropy(logits, downsample_labels(source.labels, scale))
        return loss

    @staticmethod
    def reconstruction_loss(domain: DomainPass) -> torch.Tensor:
        """Eq. 6 at every scale: BCE between the image and its reconstruction."""
        return sum(
            F.binary_cross_entropy_with_logits(logits.float(), target.float())
            for logits, target in zip(domain.reconstruction_logits, domain.reconstruction_targets)
        )

    @staticmethod
    def kl_loss(domain: DomainPass) -> torch.Tensor:
        """Eq. 5 at every scale."""
        return sum(
            gaussian_kl(latent.mean.float(), latent.log_variance.float()) for latent in domain.output.latents
        )

    def discrepancy_loss(self, source: DomainPass, target: DomainPass) -> torch.Tensor:
        """Eq. 9-10 per scale, weighted by ``discrepancy_scale_weights``."""
        return sum(
            weight
            * gaussian_kernel_discrepancy(
                s.mean,
                s.log_variance,
                t.mean,
                t.log_variance,
                min(self.config.discrepancy_pool, s.mean.shape[-1]),
            )
            for weight, s, t in zip(
                self.config.discrepancy_scale_weights, source.output.latents, target.output.latents
            )
        )

    def extra_losses(self, source: DomainPass, target: DomainPass) -> dict[str, torch.Tensor]:
        """Weighted terms a derived method adds to VarDA's (UDA-VAE++: SMIE; CMEVAE: prototype contrast)."""
        return {}

    def losses(self, source: DomainPass, target: DomainPass) -> dict[str, torch.Tensor]:
        config = self.config
        terms = {
            "segmentation": config.segmentation_weight * self.segmentation_loss(source),
            "reconstruction": config.reconstruction_weight
            * (self.reconstruction_loss(source) + self.reconstruction_loss(target)),
            "kl": config.reconstruction_weight
            * config.kl_weight
            * (self.kl_loss(source) + self.kl_loss(target)),
        }
        if config.discrepancy_weight > 0:
            terms["discrepancy"] = config.discrepancy_weight * self.discrepancy_loss(source, target)
        return {**terms, **self.extra_losses(source, target)}

    # ---- verbs ---------------------------------------------------------------------------------
    def train_step(self, source: SliceBatch, target: SliceBatch | None) -> dict[str, float]:
        source_images, source_labels = self.random_crop(source.images, source.labels)
        target_images, _ = self.random_crop(target.images, None)
        with self.autocast():
            terms = self.losses(
                self.domain_pass("source", source_images, source_labels),
                self.domain_pass("target", target_images, None),
            )
        loss = sum(terms.values())
        optimizers = self.optimizers().values()
        for optimizer in optimizers:
            optimizer.zero_grad(set_to_none=True)
        loss.backward()
        for optimizer in optimizers:  # UDA-VAE++ steps its estimators on the same total loss
            optimizer.step()
        return {"loss": loss.item(), **{name: value.item() for name, value in terms.items()}}

    @torch.no_grad()
    def segment(self, images: torch.Tensor) -> torch.Tensor:
        """Fused logits of the whole slice (padded to a multiple of 2**depth, cropped back)."""
        height, width = images.shape[-2:]
        padded = pad_to_multiple(images, 2**self.config.depth)
        with self.autocast():
            return self.network(padded).fused_logits.float()[..., :height, :width]

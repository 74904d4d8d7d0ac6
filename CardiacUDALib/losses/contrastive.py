"""Losses of the contrastive image-translation methods: PatchNCE, NT-Xent and the GAN terms.

``cut_seg`` and ``cisfa`` combine them in their own files; each function cites the equation it implements.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

GAN_LOSSES = ("lsgan", "vanilla")


def patch_nce_terms(queries: torch.Tensor, keys: torch.Tensor, temperature: float) -> torch.Tensor:
    """Per-location InfoNCE ``[B, P]`` with negatives from the same image (Zeng Eq. 11, CISFA Eq. 2, CUT).

    ``queries``, ``keys``: ``[B, P, D]`` unit-length embeddings of the translated and the input image
    at the same ``P`` locations. For query p the positive is key p, the negatives are the other
    ``P - 1`` keys of the *same* image. The keys are detached, as CUT's ``PatchNCELoss``: the input
    image's features are the anchor the translation is pulled to, not a target to move.
    """
    keys = keys.detach()
    positives = (queries * keys).sum(dim=-1, keepdim=True)  # q . k+      [B, P, 1]
    negatives = queries @ keys.transpose(1, 2)  # q . k-_n    [B, P, P]
    same_location = torch.eye(queries.shape[1], dtype=torch.bool, device=queries.device)
    negatives = negatives.masked_fill(same_location, float("-inf"))  # k- excludes k+ (Zeng: S_l \ s)
    logits = torch.cat([positives, negatives], dim=-1) / temperature
    return -F.log_softmax(logits.float(), dim=-1)[..., 0]


def foreground_weights(patch_labels: torch.Tensor, foreground_weight: float) -> torch.Tensor:
    """w_p(u) of CISFA Eq. 3: 1 where the location's label is background (0), ``foreground_weight`` elsewhere."""
    return torch.where(patch_labels > 0, foreground_weight, 1.0)


def patch_nce_loss(
    queries: torch.Tensor, keys: torch.Tensor, temperature: float, weights: torch.Tensor | None = None
) -> torch.Tensor:
    """Mean over images and locations of (w_p *) PatchNCE: one layer's term of Zeng Eq. 5 / CISFA Eq. 4.

    With ``weights`` (``[B, P]``, :func:`foreground_weights`) each location's term is multiplied by its
    weight before the mean, as CISFA's released code does: foreground terms count ``w`` times.
    """
    terms = patch_nce_terms(queries, keys, temperature)
    return terms.mean() if weights is None else (weights * terms).mean()


def nt_xent_loss(first: torch.Tensor, second: torch.Tensor, temperature: float) -> torch.Tensor:
    """SimCLR's NT-Xent (CISFA Eq. 5): ``first[i]`` and ``second[i]`` are the positive pairs.

    The 2N embeddings are L2-normalised; for each one the other 2N - 1 are the candidates (k != i) and
    its partner is the right answer; the result is the mean over all 2N anchors (the 1/2t of Eq. 5).
    """
    embeddings = F.normalize(torch.cat([first, second]).float(), dim=1)
    count = first.shape[0]
    similarities = embeddings @ embeddings.T / temperature
    itself = torch.eye(2 * count, dtype=torch.bool, device=embeddings.device)
    similarities = similarities.masked_fill(itself, float("-inf"))
    partners = torch.cat([torch.arange(count, 2 * count), torch.arange(count)]).to(embeddings.device)
    return F.cross_entropy(similarities, partners)


def _score_loss(scores: torch.Tensor, real: bool, kind: str) -> torch.Tensor:
    """Mean over patches of (D - 1)^2 / D^2 (least squares, Mao et al.) or BCE with logits (vanilla GAN)."""
    scores = scores.float()
    if kind == "lsgan":
        return ((scores - 1.0) ** 2).mean() if real else (scores**2).mean()
    if kind == "vanilla":
        target = torch.ones_like(scores) if real else torch.zeros_like(scores)
        return F.binary_cross_entropy_with_logits(scores, target)
    raise ValueError(f"unknown GAN loss {kind!r}; choose one of {', '.join(GAN_LOSSES)}")


def discriminator_loss(
    real_scores: torch.Tensor, fake_scores: torch.Tensor, kind: str = "lsgan"
) -> torch.Tensor:
    """D's loss: real patches towards 1, fakes towards 0 (Zeng Eq. 3 for LSGAN; CISFA Eq. 1 and 7 for vanilla)."""
    return _score_loss(real_scores, True, kind) + _score_loss(fake_scores, False, kind)


def generator_loss(fake_scores: torch.Tensor, kind: str = "lsgan") -> torch.Tensor:
    """The fooling term: fakes towards D's "real" (Zeng Eq. 2; the non-saturating form of CISFA Eq. 4's log D)."""
    return _score_loss(fake_scores, True, kind)

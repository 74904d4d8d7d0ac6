"""Loss functions, one module per family; each method file imports the ones it combines.

- :mod:`~CardiacUDALib.losses.segmentation`: supervised soft Dice and class-weighted cross-entropy.
- :mod:`~CardiacUDALib.losses.adversarial`: Wasserstein critic and generator terms, weight clipping
  (PnP-AdaNet).
- :mod:`~CardiacUDALib.losses.contrastive`: PatchNCE, NT-Xent and the GAN terms of contrastive
  translation (``cut_seg``, ``cisfa``).
- :mod:`~CardiacUDALib.losses.variational`: KL, class-balanced cross-entropy, kernel discrepancy,
  mutual-information and prototype terms of the variational family (``varda``, ``uda_vae_pp``,
  ``cmevae``).
"""

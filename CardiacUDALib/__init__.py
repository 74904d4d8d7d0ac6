"""CardiacUDA library: unsupervised cross-modality domain adaptation of cardiac segmentation.

Pure Python (torch, numpy, SimpleITK); never imports slicer, qt, vtk or ctk.
"""

__version__ = "0.1.0"

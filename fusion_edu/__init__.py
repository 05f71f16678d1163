"""fusion_edu: multimodal fusion for vision transformers, one paper per module.

- ``blocks``, ``vit``: the ViT parts and a single-modal ViT (notebook 01)
- ``concat``: late fusion, token concatenation, input fusion (notebook 02)
- ``tokenfusion``: TokenFusion (notebook 03)
- ``datasets``: generated, cached datasets; ``recipes``: the RGB-D model size and budget
- ``train``, ``metrics``, ``flops``, ``plotting``, ``widgets``: shared by every notebook
"""

__version__ = "0.1.0"

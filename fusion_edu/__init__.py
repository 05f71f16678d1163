"""fusion_edu: multimodal fusion for vision transformers, one paper per module.

- ``blocks``, ``vit``: the ViT parts and a single-modal ViT (notebook 01)
- ``concat``: late fusion, token concatenation, input fusion (notebook 02)
- ``tokenfusion``: TokenFusion (notebooks 03a and 03b)
- ``tokenfusion_heterogeneous``, ``camera``, ``points``: TokenFusion across formats, points + image (04)
- ``crossvit``: CrossViT (notebook 05); ``mbt``: MBT (notebook 06); ``lavt``: LAVT (notebook 07)
- ``datasets``: generated, cached datasets; ``recipes``: each notebook's model size and budget
- ``train``, ``metrics``, ``flops``, ``plotting``, ``widgets``: shared by every notebook
- ``course``: each notebook's headline experiment as one function, its results saved for notebook 08;
  ``python -m fusion_edu run-all`` runs them all headless (``__main__``)
"""

__version__ = "0.1.0"

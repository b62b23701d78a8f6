"""What a model learned and made: latent codes, interpolations, traversals and maps as tensors
(latent.py), matplotlib figures (figures.py), and PNG files of samples and reconstructions
(pictures.py)."""

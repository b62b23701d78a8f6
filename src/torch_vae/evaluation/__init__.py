"""Measuring models: the likelihood and objective (likelihood.py), sample quality in a feature
space (sample_quality.py), the classifier whose features those are (classifier.py), and where
reports go (reports.py)."""

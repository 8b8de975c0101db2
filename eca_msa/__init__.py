"""Multimodal sentiment analysis (CMU-MOSI/MOSEI/CH-SIMS, MMSA features) with ALMT and ECA in the video stream."""

from eca_msa.metrics import mosi_regression_metrics, sims_regression_metrics

__all__ = ["mosi_regression_metrics", "sims_regression_metrics"]

"""MONAI networks, pre/post-processing, training, evaluation, calibration, Grad-CAM."""

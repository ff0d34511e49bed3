"""Training: accelerate loops, synthetic scenes (scenes.py), video-folder datasets. Import-light."""

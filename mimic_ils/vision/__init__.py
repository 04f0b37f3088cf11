"""Vision cues: lungs/heart, pseudo-normal image, anatomy labels, lesion boxes (see ``base.py``)."""

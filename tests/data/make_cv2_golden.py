"""Golden files for `resize_area` (OpenCV INTER_AREA).

Run: python -m venv /tmp/v && /tmp/v/bin/pip install numpy opencv-python-headless  # golden files made with 5.0.0
     /tmp/v/bin/python tests/data/make_cv2_golden.py
A lossless random RGB image (seed 0) and its cv2.INTER_AREA resizes, as PNG.
"""
import os

import cv2
import numpy as np

here = os.path.dirname(os.path.abspath(__file__))
rng = np.random.default_rng(0)
# Smooth-ish noise so that rounding matters but values span 0..255.
img = rng.integers(0, 256, size=(50, 64, 3), dtype=np.uint8)
cv2.imwrite(os.path.join(here, "area_src_64x50.png"), cv2.cvtColor(img, cv2.COLOR_RGB2BGR))
for w, h in [(60, 47), (31, 23), (17, 50), (29, 29), (64, 25)]:
    out = cv2.resize(img, (w, h), interpolation=cv2.INTER_AREA)
    cv2.imwrite(os.path.join(here, f"area_cv2_{w}x{h}.png"), cv2.cvtColor(out, cv2.COLOR_RGB2BGR))
print(cv2.__version__)

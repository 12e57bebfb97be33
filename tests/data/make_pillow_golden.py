"""Golden files for runner's Pillow-exact bilinear / bicubic resizes and
for timm's eval transform (shorter side to floor(size / crop_pct), centre
crop), made by Pillow and torchvision themselves.

Run: python -m venv /tmp/v && /tmp/v/bin/pip install pillow torch torchvision
     /tmp/v/bin/python tests/data/make_pillow_golden.py
Source: area_src_64x50.png (random RGB, seed 0, made by make_cv2_golden.py).
Writes pil_{bilinear,bicubic}_{W}x{H}.png (Image.resize) and
tv_{bilinear,bicubic}_{SIZE}_crop{PCT}.png (torchvision Resize + CenterCrop
on the PIL image, as timm's eval transform with crop_pct); prints versions.
"""
import math
import os

import PIL
from PIL import Image
import torchvision
from torchvision import transforms

here = os.path.dirname(os.path.abspath(__file__))
src = Image.open(os.path.join(here, "area_src_64x50.png")).convert("RGB")
filters = {"bilinear": Image.BILINEAR, "bicubic": Image.BICUBIC}
modes = {"bilinear": transforms.InterpolationMode.BILINEAR, "bicubic": transforms.InterpolationMode.BICUBIC}
for name, f in filters.items():
    # Shrinking both ways, shrinking one axis and growing the other, growing.
    for w, h in [(31, 23), (17, 50), (90, 35), (101, 77)]:
        src.resize((w, h), f).save(os.path.join(here, f"pil_{name}_{w}x{h}.png"))
    for size, pct in [(32, 0.875), (29, 0.9), (40, 1.0)]:
        t = transforms.Compose([transforms.Resize(math.floor(size / pct), interpolation=modes[name]),
                                transforms.CenterCrop(size)])
        t(src).save(os.path.join(here, f"tv_{name}_{size}_crop{pct}.png"))
print(f"Pillow {PIL.__version__}, torchvision {torchvision.__version__}")

"""KFP components of the repetition-grid pipeline: one file per step, thin wrappers over `repeatlab.steps`.

Each component imports repeatlab inside its body (the function source is what runs in the container) and is built
with `install_kfp_package=False`: the image already has the pinned kfp. The image is the project's CPU image by
default; the pipeline sets each task's image from the study's `cluster.image` / `cluster.train_image`.
"""

import os

BASE_IMAGE = os.environ.get("REPEATLAB_IMAGE", "ghcr.io/repeatlab/repeatlab:0.1.0")

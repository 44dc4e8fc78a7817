"""Image baselines (VAE, CVAE, VaDE on MNIST) on textvae.core; see the image-baselines issue.

They need the [image] extra (pip install -e '.[image]'): scipy, scikit-learn, pillow, and umap-learn for VaDE's
manifold initialization; without it, the first import here is one line naming the extra.
"""

from textvae.errors import require_extra

require_extra("image", "the image baselines need", "scipy", "sklearn", "PIL")

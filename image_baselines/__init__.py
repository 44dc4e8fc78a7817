"""Image baselines (VAE, CVAE, VaDE on MNIST) on textvae.core; see the image-baselines issue."""

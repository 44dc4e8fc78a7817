"""textvae: sentence variational autoencoders (LSTM, Transformer) and image VAE baselines."""

__version__ = "0.1.0"

"""textvae: sentence variational autoencoders (LSTM, Transformer) and image VAE baselines."""

__version__ = "0.1.0"


def load(run_dir, checkpoint: str = "best"):
    """Load a trained run: `textvae.load("runs/ptb_lstm_vae").interpolate("a ...", "b ...")`."""
    from textvae.api import load as _load

    return _load(run_dir, checkpoint)

"""The Python API: `textvae.load(RUN_DIR)` -> an object that encodes, decodes, samples and interpolates."""

from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path

import torch
from torch import Tensor

from textvae.core.estimators import decoder_code
from textvae.core.flows import sample_posterior
from textvae.data.batching import TextSplit
from textvae.errors import UserError
from textvae.generate import Decoding, decode, dedupe_consecutive, interpolation_path
from textvae.pipeline import TextRun, load_run

log = logging.getLogger(__name__)


class SentenceVAE:
    """A trained run, raw strings in and out; the run's own tokenizer does the work.

    Decoding options (strategy, beam_size, length_penalty, temperature, top_k, top_p, max_length) are
    keyword arguments of every method that produces sentences; `seed` makes sampling repeatable.
    """

    def __init__(self, run: TextRun):
        self.run, self.model, self.tokenizer = run, run.model.eval(), run.tokenizer
        self.device = run.device
        self.latent_dim = self.model.latent_dim

    def _require_latent(self) -> None:
        if not self.latent_dim:
            raise UserError("this run is a language model: it has no latent code to encode or interpolate")

    def _batch(self, sentences: list[str]):
        split = TextSplit(list(sentences), self.tokenizer, self.run.config.data.max_length)
        if split.truncated:
            log.warning("%d sentence(s) longer than %d tokens were truncated", split.truncated,
                        self.run.config.data.max_length)  # fmt: skip
        return split.collate(list(range(len(split)))).to(self.device)

    @torch.no_grad()
    def encode(self, sentences: list[str]) -> tuple[Tensor, Tensor]:
        """Posterior parameters of each sentence. -> mu, logvar: [N, D]. With a flow posterior (model.flow)
        these are the base Gaussian's; the code decoded from is the flow's image of a draw (see `sample_z`)."""
        self._require_latent()
        if isinstance(sentences, str):
            sentences = [sentences]
        return self.model.encode(self._batch(sentences))

    @torch.no_grad()
    def codes(self, sentences: list[str]) -> Tensor:
        """The code decoded from each sentence's posterior: E_q[z|x] of the z the decoder reads ([N, D]): mu, or
        under a flow the mean of the flow's images of seeded draws (`reconstruct`, `interpolate` and `analogy`)."""
        return decoder_code(self.model, *self.encode(sentences))

    @torch.no_grad()
    def sample_z(self, sentences: list[str], num_samples: int = 1) -> Tensor:
        """Draws from q(z|x) for each sentence, through the flow when there is one. -> [N, num_samples, D]."""
        self._require_latent()
        if isinstance(sentences, str):
            sentences = [sentences]
        mu, logvar = self.model.encode(self._batch(sentences))
        return sample_posterior(self.model, mu, logvar, num_samples)[0]

    def decode(self, z: Tensor | None, seed: int | None = 0, num: int | None = None, **options) -> list[str]:
        """Sentences for each row of z ([N, D]); `num` sentences from a language model (z None)."""
        # data.max_length counts the words; the decoder's limit counts <eos> too (as the pipeline's)
        decoding = replace(Decoding(max_length=self.run.config.data.max_length + 1), **options)
        generator = None
        if seed is not None:
            generator = torch.Generator(device=self.device).manual_seed(seed)
        tok = self.tokenizer
        if z is not None:
            z = z.to(self.device, torch.float32)
        ids = decode(self.model.decoder, z, tok.bos_id, tok.eos_id, decoding, num, [tok.pad_id, tok.bos_id],
                     generator)  # fmt: skip
        return [tok.decode(row) for row in ids]

    def sample(self, n: int = 5, seed: int | None = 0, **options) -> list[str]:
        """n sentences decoded from z ~ N(0, I) (or sampled from a language model)."""
        if not self.latent_dim:
            options.setdefault("strategy", "sample")
            return self.decode(None, seed=seed, num=n, **options)
        generator = torch.Generator().manual_seed(seed if seed is not None else fresh_seed())
        z = torch.randn(n, self.latent_dim, generator=generator)
        return self.decode(z, seed=seed, **options)

    def reconstruct(self, sentences: list[str], **options) -> list[str]:
        """Decode each sentence's posterior mean (`codes`)."""
        return self.decode(self.codes(sentences), **options)

    def interpolate(self, a: str, b: str, steps: int = 5, method: str = "lerp", dedupe: bool = False,
                    **options) -> list[str]:  # fmt: skip
        """Sentences along the path between the posterior means of a and b, both ends included."""
        ends = self.codes([a, b])
        sentences = self.decode(interpolation_path(ends[0], ends[1], steps, method), **options)
        return dedupe_consecutive(sentences) if dedupe else sentences

    def homotopy(self, steps: int = 5, method: str = "lerp", seed: int | None = 0, **options) -> list[str]:
        """Sentences along the path between two samples of the prior (Bowman et al. 2016)."""
        self._require_latent()
        generator = torch.Generator().manual_seed(seed if seed is not None else fresh_seed())
        ends = torch.randn(2, self.latent_dim, generator=generator)
        return self.decode(interpolation_path(ends[0], ends[1], steps, method), seed=seed, **options)

    def analogy(self, a: str, b: str, c: str, **options) -> str:
        """Decode z_c + z_b - z_a: "a is to b as c is to ?"."""
        z = self.codes([a, b, c])
        return self.decode((z[2] + z[1] - z[0]).unsqueeze(0), **options)[0]


def fresh_seed() -> int:
    """A random seed that leaves the caller's global random stream as it was (torch.seed() would reseed it)."""
    return torch.Generator().seed()


def load(run_dir: str | Path, checkpoint: str = "best") -> SentenceVAE:
    """Load a trained run (best.pt, else last.pt) for encoding, decoding and interpolation."""
    return SentenceVAE(load_run(Path(run_dir), checkpoint))

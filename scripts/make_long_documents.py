"""A long-document corpus for posterior-collapse checks: a corpus's consecutive sentences joined into paragraphs.

    python scripts/make_long_documents.py OUT_DIR [--corpus ptb] [--tokens 80]

Writes OUT_DIR/train.txt, valid.txt and test.txt: each split's sentences, in their order, joined with a space
into lines of about --tokens whitespace tokens (a sentence joins the line when that brings the line closer to
--tokens; a sentence never splits). PTB's sentences follow the order of their Wall Street Journal articles,
so a line is mostly a passage of one article. With lines this long the decoder predicts well from the prefix,
and a VAE whose KL looks healthy can carry no information in z (issue 23; the collapse monitor's MI and AU
signals). Train on it with `--set data.corpus=OUT_DIR --set data.max_length=120`: from PTB at 80, about 1% of
lines are over the PTB configs' 100 tokens (the longest 112). Prints one line per split.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from textvae.data.corpus import load_corpus  # noqa: E402
from textvae.errors import UserError  # noqa: E402


def join_sentences(sentences: list[str], tokens: int) -> list[str]:
    """Consecutive sentences joined into lines of about `tokens` whitespace tokens, every sentence once, in order."""
    lines, current, length = [], [], 0
    for sentence in sentences:
        size = len(sentence.split())
        if current and abs(length + size - tokens) > abs(length - tokens):  # adding it would overshoot further
            lines.append(" ".join(current))
            current, length = [], 0
        current.append(sentence)
        length += size
    if current:
        lines.append(" ".join(current))
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path, help="directory to write train.txt, valid.txt, test.txt into")
    parser.add_argument("--corpus", default="ptb", help="a known corpus name or a path (default: ptb)")
    parser.add_argument("--tokens", type=int, default=80, help="target whitespace tokens per line (default: 80)")
    args = parser.parse_args(argv)
    if args.tokens < 1:
        print("error: --tokens must be at least 1", file=sys.stderr)
        return 2
    try:
        corpus = load_corpus(args.corpus)
    except UserError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    for split in ("train", "valid", "test"):
        lines = join_sentences(corpus.splits[split], args.tokens)
        (args.out / f"{split}.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
        sizes = sorted(len(line.split()) for line in lines)
        print(f"{split}: {len(corpus.splits[split])} sentences -> {len(lines)} lines, tokens per line: mean "
              f"{sum(sizes) / len(sizes):.1f}, median {sizes[len(sizes) // 2]}, max {sizes[-1]}")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())

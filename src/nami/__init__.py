"""nami (波): Japanese language models built on the Wave Network (arXiv 2411.02674).

Data flow: ``text`` (MeCab + SentencePiece with exact offsets) → ``data`` (SQuAD loading,
QA windows) → ``models`` (Wave / Transformer encoders, span head) → ``losses`` →
``training`` (Accelerate loop, run directories) → ``evaluation`` (JSQuAD metric,
span decoding, prediction) → ``reports`` (model comparison). ``cli`` is a thin layer on top.
"""

__version__ = "0.1.0"

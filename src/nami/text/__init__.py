"""Japanese text pipeline: NFKC normalisation → MeCab words → SentencePiece pieces.

Every token keeps the exact character span of the original text it came from (see
:mod:`nami.text.tokenizer`), which extractive QA needs to map answers to tokens.
"""

from nami.text.default import default_tokenizer
from nami.text.tokenizer import (
    CLS_ID,
    MASK_ID,
    PAD_ID,
    SEP_ID,
    SPECIAL_TOKENS,
    UNK_ID,
    Encoding,
    JapaneseTokenizer,
    TokenizerError,
    train_tokenizer,
)

__all__ = [
    "CLS_ID",
    "MASK_ID",
    "PAD_ID",
    "SEP_ID",
    "SPECIAL_TOKENS",
    "UNK_ID",
    "Encoding",
    "JapaneseTokenizer",
    "TokenizerError",
    "default_tokenizer",
    "train_tokenizer",
]

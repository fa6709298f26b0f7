"""Option values the command line lists without importing numpy or torch (``nami --help`` stays fast)."""

# Where an extractive answer may begin and end: MeCab word boundaries, or any token (nami.data.features).
ANSWER_BOUNDARIES = ("word", "token")

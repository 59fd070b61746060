"""What a post is, besides its newsgroup: the properties a task's instruction may aim at.

- sentiment: VADER's compound score (-1 very negative .. 1 very positive), from the lexicon
  and rules shipped in the ``vaderSentiment`` package;
- hostility: the probability that the text is offensive (0..1), from the linear model over
  words shipped in ``alt-profanity-check`` (in effect a weighted lexicon);
- length: characters.

Each comes from a well-kept library that carries its own data: nothing is downloaded at run
time. Plain functions over lists of texts.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from qwen_assets.settings import SCORE_PROPERTIES


def sentiment_scores(texts: Sequence[str]) -> np.ndarray:
    from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

    analyzer = SentimentIntensityAnalyzer()
    return np.array([analyzer.polarity_scores(text)["compound"] for text in texts], float)


def hostility_scores(texts: Sequence[str]) -> np.ndarray:
    from profanity_check import predict_prob

    return np.asarray(predict_prob(list(texts)), dtype=float) if texts else np.zeros(0)


def document_properties(texts: Sequence[str]) -> pd.DataFrame:
    """One row per text, one column per score property (see ``SCORE_PROPERTIES``)."""
    frame = pd.DataFrame(
        {
            "sentiment": sentiment_scores(texts),
            "hostility": hostility_scores(texts),
            "length": np.array([len(text) for text in texts], dtype=float),
        }
    )
    return frame[list(SCORE_PROPERTIES)]

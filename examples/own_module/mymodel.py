"""A model in a file of your own, imported by deploy.py beside it."""

from helpers import NEGATIVE, POSITIVE, words


def predict(texts):
    """A batch of strings in, one label per string out."""
    labels = []
    for text in texts:
        score = sum((w in POSITIVE) - (w in NEGATIVE) for w in words(text))
        labels.append("positive" if score > 0 else "negative" if score < 0 else "neutral")
    return labels

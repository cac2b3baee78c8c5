"""Word lists and a tokenizer: a module of your own that mymodel.py imports."""

POSITIVE = {"good", "great", "love", "fast"}
NEGATIVE = {"bad", "slow", "hate", "broken"}


def words(text):
    """The lower-case words of a text, punctuation stripped."""
    return [w.strip(".,;:!?").lower() for w in text.split()]

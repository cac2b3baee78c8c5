"""A model for the CLI.

    clipper deploy shouter 1 --input-type strings \\
        --python-file examples/shout.py --function shout
"""


def shout(texts):
    """A batch of strings in, one output per string out."""
    return [text.upper() + "!" for text in texts]

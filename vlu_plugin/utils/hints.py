"""The one "did you mean" of every error about an unknown option, key or name."""
import difflib


def did_you_mean(key, choices):
    """' (did you mean X?)' for the closest of `choices` to `key`, or '' when none is close."""
    close = difflib.get_close_matches(str(key), [str(c) for c in choices], 1)
    return f' (did you mean {close[0]!r}?)' if close else ''

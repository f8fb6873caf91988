"""Solution: read a paired confidence interval (notebook 07)."""


def verdict(ci_low, ci_high):
    """95% paired CI of (method - baseline) -> "better", "worse" or "undecided" (0 inside, ends included)."""
    if ci_low > 0:
        return "better"
    if ci_high < 0:
        return "worse"
    return "undecided"

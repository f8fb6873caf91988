"""Check functions for the notebook exercises.

Each ``check_*`` takes the student's answer (usually a function), runs it on small hand-made
cases, compares with a reference written here independently of the package modules, and
prints either ``Correct`` or what went wrong plus a hint. It returns ``True``/``False`` and
never raises on a wrong answer, so a notebook always runs to the end. An answer left as the
``...`` placeholder (or a function returning ``None``) is reported as "To do", not as wrong.

Solutions live apart, in ``notebooks/solutions/``.
"""

from __future__ import annotations

import math
from typing import Callable, Sequence

import numpy as np

OK = "Correct"


def _report(ok: bool, name: str, problem: str = "", hint: str = "") -> bool:
    if ok:
        print(f"[{name}] {OK}!")
    elif problem in (NOT_DONE, PLACEHOLDER):  # untouched: nothing is wrong yet
        print(f"[{name}] To do: {problem}")
    else:
        print(f"[{name}] Not yet: {problem}")
        if hint:
            print(f"  hint: {hint}")
    return ok


def _call(fn: Callable, *args):
    """Run the student's function; return (value, error message or None)."""
    try:
        return fn(*args), None
    except NotImplementedError:
        return None, "not implemented yet (still raises NotImplementedError)"
    except Exception as exc:  # a student's bug must not stop the notebook
        return None, f"raised {type(exc).__name__}: {exc}"


#: What an untouched exercise prints after "To do:" (a function still returning None / an answer still ``...``).
NOT_DONE = "your function returns None so far: replace the ... with code"
PLACEHOLDER = "your answer is still the ... placeholder: replace it"


def _as_float(value) -> float | None:
    if value is None:
        return None
    try:
        if hasattr(value, "detach"):
            value = value.detach().cpu()
        return float(value)
    except (TypeError, ValueError):
        return None


# --------------------------------------------------------------------------- ranking metrics
def reference_rank(scores: Sequence[float], target: int, exclude: Sequence[int] = ()) -> int:
    """0-based rank of ``target`` under full ranking, pessimistic on ties.

    Items in ``exclude`` (the user's history) are removed from the ranking. A tie with the target
    counts against it: rank = #{items j != target, j not excluded : score_j >= score_target}.
    """
    s = np.asarray(scores, dtype=np.float64)
    keep = np.ones(len(s), dtype=bool)
    keep[list(exclude)] = False
    keep[target] = False
    return int(np.sum(s[keep] >= s[target]))


def reference_hr_ndcg(rank: int, k: int) -> tuple[float, float]:
    """HR@K and NDCG@K for one user with one held-out item at 0-based ``rank``.

    HR@K = 1 if rank < K; NDCG@K = 1 / log2(rank + 2) if rank < K (the ideal DCG is 1).
    Source: the leave-one-out protocol of SASRec (Kang & McAuley 2018, Sec. IV-B).
    """
    if rank < k:
        return 1.0, 1.0 / math.log2(rank + 2)
    return 0.0, 0.0


_METRIC_CASES = [
    # (scores over 6 items, target, history to exclude, k)
    ([0.1, 0.9, 0.3, 0.8, 0.2, 0.5], 3, [], 2),       # rank 1 -> hit
    ([0.1, 0.9, 0.3, 0.8, 0.2, 0.5], 3, [1], 1),      # history item removed -> rank 0
    ([0.1, 0.9, 0.3, 0.8, 0.2, 0.5], 0, [], 5),       # rank 5 -> miss at 5
    ([0.5, 0.5, 0.5, 0.5, 0.1, 0.0], 2, [], 3),       # ties count against the target -> rank 3 -> miss
    ([0.5, 0.5, 0.5, 0.5, 0.1, 0.0], 2, [0, 1], 2),   # one tie left -> rank 1 -> hit
    ([0.0, 0.2, 0.4, 0.6, 0.8, 1.0], 5, [], 1),       # best item -> rank 0
]


def check_hr_at_k(fn: Callable) -> bool:
    """Check ``fn(scores, target, history, k) -> 0 or 1`` (HR@K for one user, full ranking).

    ``scores``: array (I,) of model scores; ``target``: the held-out item id; ``history``: item ids
    the user already has (removed from the ranking); ties count against the target.
    """
    for scores, target, hist, k in _METRIC_CASES:
        got, err = _call(fn, np.array(scores), target, list(hist), k)
        if err:
            return _report(False, "HR@K", err)
        if got is None:
            return _report(False, "HR@K", NOT_DONE)
        want, _ = reference_hr_ndcg(reference_rank(scores, target, hist), k)
        if _as_float(got) != want:
            tie = len(set(scores)) < len(scores)
            return _report(
                False, "HR@K",
                f"scores={scores}, target={target}, history={hist}, K={k}: expected {want:g}, got {got}",
                "items with a score equal to the target's are ranked above it (pessimistic ties)" if tie
                else "remove the history items before ranking, then hit = (number of better items) < K",
            )
    return _report(True, "HR@K")


def check_ndcg_at_k(fn: Callable) -> bool:
    """Check ``fn(scores, target, history, k) -> float`` (NDCG@K for one user, one relevant item)."""
    for scores, target, hist, k in _METRIC_CASES:
        got, err = _call(fn, np.array(scores), target, list(hist), k)
        if err:
            return _report(False, "NDCG@K", err)
        value = _as_float(got)
        if value is None:
            return _report(False, "NDCG@K", NOT_DONE if got is None else f"returned {got!r}, not a number")
        _, want = reference_hr_ndcg(reference_rank(scores, target, hist), k)
        if not math.isclose(value, want, rel_tol=1e-6, abs_tol=1e-9):
            return _report(
                False, "NDCG@K",
                f"scores={scores}, target={target}, history={hist}, K={k}: expected {want:.4f}, got {value:.4f}",
                "with a 0-based rank r, NDCG@K = 1/log2(r + 2) when r < K, else 0",
            )
    return _report(True, "NDCG@K")


# --------------------------------------------------------------------------- leave-one-out
def check_leave_one_out(fn: Callable) -> bool:
    """Check ``fn(sequence) -> (train, (valid_history, valid_target), (test_history, test_target))``.

    Leave-one-out (Kang & McAuley 2018, Sec. IV-A): train = s[:-2], valid = (s[:-2], s[-2]),
    test = (s[:-1], s[-1]).
    """
    for seq in ([4, 8, 15, 16, 23, 42], [1, 2, 3]):
        got, err = _call(fn, list(seq))
        if err:
            return _report(False, "leave-one-out", err)
        if got is None:
            return _report(False, "leave-one-out", NOT_DONE)
        try:
            train, (vh, vt), (th, tt) = got
            got_n = (list(train), list(vh), int(vt), list(th), int(tt))
        except Exception:
            return _report(False, "leave-one-out", f"returned {got!r}",
                           "return (train, (valid_history, valid_target), (test_history, test_target))")
        want = (seq[:-2], seq[:-2], seq[-2], seq[:-1], seq[-1])
        if got_n != want:
            return _report(False, "leave-one-out", f"for {seq} expected {want}, got {got_n}",
                           "the test history includes the validation item; the last item is never trained on")
    return _report(True, "leave-one-out")


# --------------------------------------------------------------------------- losses
def reference_bpr(user, item) -> float:
    """BPR with in-batch negatives (Rendle et al. 2009; used by RA-Rec, Yu et al. 2024, for the recommendation loss).

    ``user`` (B, H), ``item`` (B, H): row b of ``item`` is user b's positive, every other row is a
    negative. Loss = mean over b and j != b of -log sigmoid(u_b . i_b - u_b . i_j).
    """
    u = np.asarray(user, dtype=np.float64)
    v = np.asarray(item, dtype=np.float64)
    s = u @ v.T
    b = len(s)
    total = 0.0
    for row in range(b):
        for col in range(b):
            if col != row:
                x = s[row, row] - s[row, col]
                total += math.log1p(math.exp(-x)) if x > -30 else -x
    return total / (b * (b - 1))


def reference_info_nce(a, b, temperature: float) -> float:
    """One-directional InfoNCE of ``a`` (B, H) against ``b`` (B, H) on cosine similarity.

    Loss = mean over rows r of -log( exp(cos(a_r, b_r)/t) / sum_j exp(cos(a_r, b_j)/t) )
    (van den Oord et al. 2018, Eq. 4; RA-Rec's contrastive alignment loss).
    """
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    a = a / np.linalg.norm(a, axis=1, keepdims=True)
    b = b / np.linalg.norm(b, axis=1, keepdims=True)
    logits = a @ b.T / temperature
    logits -= logits.max(axis=1, keepdims=True)
    log_prob = logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))
    return float(-np.mean(np.diag(log_prob)))


def _loss_cases(seed: int = 0):
    rng = np.random.default_rng(seed)
    return [rng.normal(size=(n, h)) for n, h in ((4, 3), (6, 5), (2, 8))]


def _scalar_answer(fn: Callable, *args) -> tuple[float | None, str]:
    """Call a student's loss function: ``(value, "")``, or ``(None, what is wrong)``."""
    got, err = _call(fn, *args)
    if err:
        return None, err
    if got is None:
        return None, NOT_DONE
    value = _as_float(got)
    if value is None:
        return None, "return a scalar (a 0-d tensor), not a vector"
    return value, ""


def check_bpr_loss(fn: Callable) -> bool:
    """Check ``fn(user (B,H) tensor, item (B,H) tensor) -> scalar tensor``: BPR with in-batch negatives."""
    import torch

    rng = np.random.default_rng(1)
    for u in _loss_cases():
        v = rng.normal(size=u.shape)
        value, problem = _scalar_answer(fn, torch.tensor(u, dtype=torch.float64), torch.tensor(v, dtype=torch.float64))
        if problem:
            return _report(False, "BPR", problem)
        want = reference_bpr(u, v)
        if not math.isclose(value, want, rel_tol=1e-5, abs_tol=1e-8):
            return _report(
                False, "BPR", f"batch of {len(u)}: expected {want:.5f}, got {value:.5f}",
                "scores = user @ item.T; positives are the diagonal; average -logsigmoid(pos - neg) "
                "over the B*(B-1) off-diagonal pairs (torch.nn.functional.logsigmoid is stable)",
            )
    return _report(True, "BPR")


def check_info_nce(fn: Callable, temperature: float = 0.1) -> bool:
    """Check ``fn(a (B,H), b (B,H), temperature) -> scalar``: InfoNCE on cosine similarity."""
    import torch

    rng = np.random.default_rng(2)
    for a in _loss_cases(3):
        b = a + 0.5 * rng.normal(size=a.shape)
        value, problem = _scalar_answer(fn, torch.tensor(a), torch.tensor(b), temperature)
        if problem:
            return _report(False, "InfoNCE", problem)
        want = reference_info_nce(a, b, temperature)
        if not math.isclose(value, want, rel_tol=1e-5, abs_tol=1e-8):
            return _report(False, "InfoNCE", f"expected {want:.5f}, got {value:.5f}",
                           "normalise rows, logits = a @ b.T / t, then cross-entropy with targets 0..B-1")
    return _report(True, "InfoNCE")


# --------------------------------------------------------------------------- prompts
def check_token_count(fn: Callable, tokenizer, texts: Sequence[str] | None = None) -> bool:
    """Check ``fn(text, tokenizer) -> int``: the number of tokens the model reads for ``text``.

    The reference is ``len(tokenizer(text)["input_ids"])`` (special tokens included, as the model
    sees them).
    """
    texts = list(texts or ["Brand: Levi's. Categories: Men > Jeans.", "a b c", ""])
    for text in texts:
        got, err = _call(fn, text, tokenizer)
        if err:
            return _report(False, "token count", err)
        if got is None:
            return _report(False, "token count", NOT_DONE)
        want = len(tokenizer(text)["input_ids"])
        if got is None or int(got) != want:
            return _report(False, "token count", f"{text!r}: expected {want}, got {got}",
                           "call the tokenizer and count input_ids; characters and words are not tokens")
    return _report(True, "token count")


def check_prefix_shape(answer, batch_size: int, num_instruction_tokens: int, num_id_tokens: int,
                       hidden_size: int) -> bool:
    """Check the shape of one layer's soft prompt (prefix) in RA-Rec.

    Each layer l receives P = num_instruction_tokens + num_id_tokens prefix vectors of the
    layer's hidden size H for each of the B users: shape (B, P, H) (RA-Rec, Yu et al. 2024: layer-specific soft prompts of the alignment module).
    ``answer`` is a tuple of ints or a tensor of that shape.
    """
    shape = tuple(answer.shape) if hasattr(answer, "shape") else answer
    if shape is None or shape is Ellipsis:
        return _report(False, "prefix shape", PLACEHOLDER)
    want = (batch_size, num_instruction_tokens + num_id_tokens, hidden_size)
    try:
        shape = tuple(int(x) for x in shape)
    except Exception:
        return _report(False, "prefix shape", f"{answer!r} is not a shape", "give a tuple (B, P, H)")
    if shape != want:
        hint = "P counts both the instruction slots and the ID slots" if len(shape) == 3 else \
            "three numbers: batch, prefix length, hidden size"
        return _report(False, "prefix shape", f"got {shape}", hint)
    return _report(True, "prefix shape")


def check_overflow_length(answer, token_counts: Sequence[int], context_window: int) -> bool:
    """Check the shortest history length whose ID Translation prompt no longer fits.

    ``token_counts[n]`` is the prompt length for a history of ``n`` items; the answer is the
    smallest ``n`` with ``token_counts[n] > context_window`` (``None`` if none overflows).
    """
    want = next((n for n, c in enumerate(token_counts) if c > context_window), None)
    if answer is Ellipsis:
        return _report(False, "overflow", PLACEHOLDER)
    if answer != want:
        return _report(False, "overflow", f"expected {want}, got {answer}",
                       "find the first history length whose token count is above the window")
    return _report(True, "overflow")


def check_memory_estimate(answer_mib, num_parameters: int, bits: int = 4) -> bool:
    """Check an estimate of weight memory in MiB: ``num_parameters * bits / 8 / 2**20`` (within 1%)."""
    if answer_mib is Ellipsis or answer_mib is None:
        return _report(False, "memory estimate", PLACEHOLDER)
    want = num_parameters * bits / 8 / 2**20
    value = _as_float(answer_mib)
    if value is None or not math.isclose(value, want, rel_tol=0.01):
        hint = "bytes = parameters x bits / 8; MiB = bytes / 2**20"
        if value is not None and math.isclose(value, want * 2**20 / 1e6, rel_tol=0.01):
            hint = "you computed MB (10**6 bytes); a MiB is 2**20 = 1,048,576 bytes"
        return _report(False, "memory estimate", f"expected about {want:.2f} MiB, got {answer_mib}", hint)
    return _report(True, "memory estimate")


# --------------------------------------------------------------------------- reading a comparison (notebook 07)
#: What :func:`check_paired_verdict` expects: B = the method, A = the baseline, CI of mean(B - A).
VERDICTS = ("better", "worse", "undecided")

_CI_CASES = [  # (ci_low, ci_high, verdict): a 95% paired CI of (method - baseline)
    (0.004, 0.031, "better"),
    (-0.046, -0.017, "worse"),
    (-0.022, 0.0001, "undecided"),   # README: RA-Rec - ID Translation HR@100 [-0.0217, +0.0001]
    (-0.011, 0.009, "undecided"),
    (0.0, 0.02, "undecided"),        # 0 is inside a closed interval: no difference is still plausible
    (-0.02, 0.0, "undecided"),
]


def check_paired_verdict(fn: Callable) -> bool:
    """Check ``fn(ci_low, ci_high) -> "better" | "worse" | "undecided"``.

    The arguments are the 95% paired bootstrap CI of (method - baseline) on the same users
    (:func:`rarec_lite.metrics.paired_bootstrap`, ``metrics.json``'s ``vs_<baseline>_<metric>``):
    the method is better when the whole interval is above 0, worse when it is below 0, and
    undecided when it contains 0 (endpoints included).
    """
    for low, high, want in _CI_CASES:
        got, err = _call(fn, low, high)
        if err:
            return _report(False, "paired verdict", err)
        if got is None:
            return _report(False, "paired verdict", NOT_DONE)
        if got not in VERDICTS:
            return _report(False, "paired verdict", f"returned {got!r}", f"return one of {VERDICTS}")
        if got != want:
            hint = ("an interval that contains 0 (even at an end) cannot tell the methods apart"
                    if want == "undecided" else "look at the sign of the whole interval, not of its middle")
            return _report(False, "paired verdict", f"CI [{low:+.4f}, {high:+.4f}]: expected {want!r}, got {got!r}", hint)
    return _report(True, "paired verdict")


# --------------------------------------------------------------------------- what overflows (notebook 08)
def check_overflowing_user(user, prompt_of: Callable, num_users: int) -> bool:
    """Check a user index whose ID Translation prompt does not fit its token budget.

    Args:
        user: the student's answer, a user index (``...`` when not done).
        prompt_of: ``user -> rarec_lite.prompts.PromptResult`` of that user's ID Translation prompt
            (with the notebook's tokenizer and budget).
        num_users: users in the dataset (valid indices are ``0 .. num_users - 1``).
    """
    if user is Ellipsis or user is None:
        return _report(False, "overflowing user", PLACEHOLDER)
    try:
        u = int(user)
    except (TypeError, ValueError):
        return _report(False, "overflowing user", f"{user!r} is not a user index", "give an int")
    if not 0 <= u < num_users:
        return _report(False, "overflowing user", f"user {u} is not in 0..{num_users - 1}")
    p = prompt_of(u)
    if not p.truncated:
        return _report(False, "overflowing user",
                       f"user {u}'s prompt needs {p.tokens_needed} tokens and fits ({p.items_total} items all kept)",
                       "loop over users and test PromptResult.truncated (or tokens_needed > the budget)")
    return _report(True, "overflowing user")


#: The choices of :func:`check_what_rarec_keeps` (notebook 08 prints them).
RAREC_KEEPS = {
    "a": "nothing more than ID Translation: the same truncated text",
    "b": "the most recent items as text, and the whole history (up to SASRec's max_len items) through the "
         "SASRec user embedding in its soft prompt",
    "c": "every item of the history as text, because soft prompts add context length",
}


def check_what_rarec_keeps(answer) -> bool:
    """Check the choice (``"a"``, ``"b"`` or ``"c"`` of :data:`RAREC_KEEPS`) of what RA-Rec's hybrid
    user prompt keeps of a history that overflows ID Translation's budget (RA-Rec, Sec. 3: the
    soft prompt is built from the ID encoder's embedding of the whole sequence)."""
    if answer is Ellipsis or answer is None:
        return _report(False, "what RA-Rec keeps", PLACEHOLDER)
    choice = str(answer).strip().lower()[:1]
    if choice not in RAREC_KEEPS:
        return _report(False, "what RA-Rec keeps", f"{answer!r} is not one of {sorted(RAREC_KEEPS)}")
    if choice != "b":
        hint = {"a": "the user tower also gets a soft prompt: what is it built from?",
                "c": "the hard prompt has a budget too: a soft prompt is a few slots per layer, not text"}[choice]
        return _report(False, "what RA-Rec keeps", f"not {choice!r}", hint)
    return _report(True, "what RA-Rec keeps")

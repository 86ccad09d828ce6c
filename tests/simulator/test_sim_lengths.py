"""How long an answer is: the model's own end, unless a limit comes first (pure logic)."""

from hypothesis import given
from hypothesis import strategies as st

from simulator.api import answer_length

counts = st.integers(min_value=1, max_value=200_000)


@given(natural=counts, max_tokens=st.none() | counts, ignore_eos=st.booleans(), room=counts)
def test_an_answer_never_passes_a_limit_and_says_which_ended_it(
    natural: int, max_tokens: int | None, ignore_eos: bool, room: int
) -> None:
    length, limited = answer_length(
        natural=natural, max_tokens=max_tokens, ignore_eos=ignore_eos, room=room
    )
    limit = room if max_tokens is None else min(room, max_tokens)

    assert 1 <= length <= limit
    if ignore_eos:
        assert (length, limited) == (limit, True)
    elif natural <= limit:
        assert (length, limited) == (natural, False)  # finish_reason "stop"
    else:
        assert (length, limited) == (limit, True)  # finish_reason "length"

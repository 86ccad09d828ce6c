from hypothesis import given
from hypothesis import strategies as st

from customers.keys import key_generate, key_hash, key_id_parse, key_matches


def test_a_new_key_parses_and_matches_its_hash() -> None:
    new = key_generate()
    assert key_id_parse(new.plaintext) == new.key_id
    assert key_matches(new.plaintext, new.secret_hash)
    assert new.secret_hash == key_hash(new.plaintext)
    assert new.plaintext not in new.secret_hash


def test_keys_are_unique() -> None:
    assert len({key_generate().plaintext for _ in range(1000)}) == 1000


def test_a_changed_secret_does_not_match() -> None:
    new = key_generate()
    tampered = new.plaintext[:-1] + ("A" if new.plaintext[-1] != "A" else "B")
    assert key_id_parse(tampered) == new.key_id
    assert not key_matches(tampered, new.secret_hash)


@given(st.text(max_size=80))
def test_garbage_never_parses_as_a_key(text: str) -> None:
    parsed = key_id_parse(text)
    assert parsed is None or (text.startswith("tf_") and len(parsed) == 12)

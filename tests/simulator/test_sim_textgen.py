from __future__ import annotations

from simulator.textgen import TextGen, chat_prompt, count_tokens, text_prompt


def test_the_tokenizer_counts_words_and_punctuation() -> None:
    # Hello , world ! It ' s 2026 .
    assert count_tokens("Hello, world! It's 2026.") == 9


def test_generated_text_re_tokenizes_to_its_token_count() -> None:
    textgen = TextGen(seed=0)
    prompt = text_prompt(0, "anything")

    for length in (1, 17, 300, 5000):
        assert count_tokens(textgen.text(prompt, 0, length)) == length


def test_text_is_a_pure_function_of_seed_and_prompt() -> None:
    prompt = chat_prompt(3, [("user", "hi")])

    assert TextGen(3).text(prompt, 0, 50) == TextGen(3).text(prompt, 0, 50)
    assert TextGen(3).text(prompt, 0, 50) != TextGen(4).text(prompt, 0, 50)


def test_pieces_of_the_output_join_into_the_whole() -> None:
    textgen = TextGen(seed=0)
    prompt = text_prompt(0, "x")

    assert textgen.text(prompt, 0, 4000) + textgen.text(prompt, 4000, 9000) == textgen.text(
        prompt, 0, 9000
    )


def test_natural_lengths_stay_within_bounds() -> None:
    textgen = TextGen(seed=0)

    lengths = {textgen.natural_length(text_prompt(0, f"prompt {i}")) for i in range(500)}

    assert min(lengths) >= 16
    assert max(lengths) <= 256
    assert len(lengths) > 100

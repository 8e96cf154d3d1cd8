"""The generation-mode title parser on crafted outputs, and generation-mode metrics with parse failures."""

import math

import pytest

from hanorec_trl.evaluation.generation import (
    generate_answers,
    generation_ranks,
    match_candidates,
    parse_titles,
    rank_from_generation,
)

CANDS = [
    '"American President, The (1995)"',
    '"Heat (1995)"',
    '"Psycho (1960)"',
    '"Psycho (1998)"',
    '"Bug\'s Life, A (1998)"',
    '"Toy Story (1995)"',
]


@pytest.mark.parametrize(
    "output, expected",
    [
        ('"Heat (1995)"', [1]),  # the whole output is a candidate
        ("Heat (1995)", [1]),  # unquoted exact title
        ('  "heat (1995)" ', [1]),  # case and whitespace
        ("\u201cToy  Story (1995)\u201d", [5]),  # curly quotes, doubled space
        ('"Toy Story"', [5]),  # trailing year dropped (unique)
        ('"The American President"', [0]),  # leading article vs ", The"
        ('"american president, the"', [0]),
        ('"A Bug\'s Life"', [4]),
        ('"Psycho"', []),  # two candidates match without the year: never guess
        ('"Psycho (1998)"', [3]),
        ("1. Heat (1995)\n2. Toy Story (1995)\n3. Unknown movie", [1, 5]),  # a numbered list
        ('"Heat (1995)", then "Heat (1995)" again, and "Toy Story (1995)"', [1, 5]),  # duplicates skipped
        ("I think the user will like action movies.", []),
        ("", []),
        ('"Heat 2 (2025)"', []),  # no partial / substring matches
    ],
)
def test_parser_maps_each_title_to_at_most_one_candidate(output, expected):
    assert match_candidates(parse_titles(output, CANDS), CANDS) == expected


def test_parse_titles_forms():
    assert parse_titles('Answer: "Heat" and "Alien"') == ["Heat", "Alien"]
    assert parse_titles("- Heat\n* Alien\n\n3) Fargo") == ["Heat", "Alien", "Fargo"]


def test_rank_from_generation_and_failures_in_denominator():
    assert rank_from_generation('"Heat (1995)"', CANDS, 1) == (1.0, True)
    assert rank_from_generation("1. Toy Story (1995)\n2. Heat (1995)", CANDS, 1) == (2.0, True)
    rank, parsed = rank_from_generation('"Toy Story (1995)"', CANDS, 1)
    assert math.isinf(rank) and parsed  # parsed, but the target is not listed
    rank, parsed = rank_from_generation("no idea", CANDS, 1)
    assert math.isinf(rank) and not parsed
    ranks, failed = generation_ranks(['"Heat (1995)"', "no idea", '"Psycho"'], [CANDS] * 3, [1, 1, 2])
    assert ranks[0] == 1 and math.isinf(ranks[1]) and math.isinf(ranks[2])
    assert failed.tolist() == [False, True, True]


def test_generate_answers_greedy_is_deterministic(tiny_lm, tiny_tok):
    from hanorec_trl.data.prompts import ranking_prompt
    from hanorec_trl.evaluation.generation import GenerationSettings

    prompts = [ranking_prompt(["Heat"], ["Alien", "Fargo"])[0], ranking_prompt(["Love story", "Dark"], ["Heat"])[0]]
    settings = GenerationSettings(max_new_tokens=5)
    a = generate_answers(tiny_lm, tiny_tok, prompts, settings=settings, batch_size=2, progress=False)
    b = generate_answers(tiny_lm, tiny_tok, prompts[:1], settings=settings, batch_size=1, progress=False)
    assert len(a) == 2 and all(isinstance(x, str) for x in a)
    assert a[0] == b[0]  # left padding in a batch does not change greedy decoding

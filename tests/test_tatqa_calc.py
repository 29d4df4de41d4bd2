"""The safe calculator: real values for what models and the dev set write, AnswerError for all else."""

from __future__ import annotations

import math
import random

import pytest

from loratune.errors import AnswerError, LoratuneError
from loratune.tatqa.calc import MAX_DEPTH, evaluate, tokenize


@pytest.mark.parametrize(
    ("expression", "scale", "expected"),
    [
        ("1 + 2", "", 3.0),
        ("2 + 3 * 4", "", 14.0),
        ("(2 + 3) * 4", "", 20.0),
        ("10 - 4 - 3", "", 3.0),  # left-associative
        ("100 / 10 / 2", "", 5.0),
        ("-5 + 2", "", -3.0),
        ("--5", "", 5.0),
        ("+5", "", 5.0),
        ("-(9 + 12) / 2", "million", -10.5),
        ("1,234.5 + 0.5", "", 1235.0),
        ("1,234,567 - 1,000,000", "", 234567.0),
        (".5 * 4", "", 2.0),
        ("$1,496.5 - $1,202.9", "", 293.6),
        ("$  1,452.4 + 44.1", "", 1496.5),
        ("$(290.2 + 239.6 + 190.4)", "", 720.2),
        ("(123)", "", -123.0),  # accounting negative
        ("($1,234)", "", -1234.0),
        ("3 + (13) + 26", "", 16.0),  # dev set: the (13) is a negative cell
        ("-114 - (71)", "million", -43.0),
        ("(-5)", "", -5.0),  # grouping around a signed number
        ("((5))", "", -5.0),
        ("[(166+178)/2] - [(57+44)/2]", "million", 121.5),
        ("[(-18,668) - (-9,166)] / -9,166 * 100", "percent", (-18668 + 9166) / -9166 * 100),
        ("(104 - 89) / 89 * 100", "percent", 1500 / 89),
        # a trailing % is read against the answer's scale
        ("34% + 11%", "percent", 45.0),
        ("(2.7% + 2.0% + 1.0%) / 3", "percent", 1.9),
        ("53% * $23,406", "", 12405.18),
        ("1,027 / 11%", "", 1027 / 0.11),
        ("(1-15%) * ($2.2 / 15%)", "billion", 0.85 * 2.2 / 0.15),
        ("12 %", "percent", 12.0),
        ("12%", "", 0.12),
        ("  7  ", "", 7.0),
        ("0 - (-42,271)", "thousand", 42271.0),
    ],
)
def test_values(expression: str, scale: str, expected: float) -> None:
    assert evaluate(expression, scale) == pytest.approx(expected, rel=1e-12)


def test_exact_float_arithmetic() -> None:
    # The same IEEE operations in the same order as Python: the metric rounds what we compute.
    assert evaluate("(108,307-93,081)/93,081") == (108307 - 93081) / 93081
    assert evaluate("0.43-1.75") == 0.43 - 1.75


@pytest.mark.parametrize(
    "expression",
    [
        "", "   ", "1 +", "* 2", "1 2", "(1 + 2", "1 + 2)", "(1 + 2]", "[1 + 2)", "()", "[]",
        "1 / 0", "5 / (3 - 3)", "1 / 0.0", "1 ** 2", "2 ^ 3", "1e5", "1E5", "0x10", "1_000", "inf", "nan",
        "1,23", "1,2345", "12,34.5", "1234,567", "1.", "1..2", "1.2.3", "$", "$-5", "5$", "%5", "(5 + 3)%",
        "__import__('os').system('true')", "open('/etc/passwd')", "lambda: 1", "x + 1", "1; 2", "1, 2",
        "sum([1, 2])", "abs(-1)", "1 million", "60.3 million + 32,137 thousand", "\x00", "1\n+\n2 ==",
        "١٢ + 1",  # other scripts' digits: float() takes them, we do not
        "5 % 3", "9" * 400 + " * 10", "1" + "0" * 400,
    ],
)
def test_hostile_or_malformed_raise_answer_error(expression: str) -> None:
    with pytest.raises(AnswerError):
        evaluate(expression)


def test_whitespace_between_tokens_is_free() -> None:
    assert evaluate("1\n+\t2") == 3.0


def test_division_by_zero_names_the_position() -> None:
    with pytest.raises(AnswerError, match="division by zero at position 2"):
        evaluate("1 / 0")


def test_stray_character_is_quoted() -> None:
    with pytest.raises(AnswerError, match=r"unexpected 'x \+ 1'"):
        evaluate("2 * x + 1")


def test_nesting_is_bounded_not_a_recursion_error() -> None:
    assert evaluate("(" * MAX_DEPTH + "1 + 1" + ")" * MAX_DEPTH) == 2.0
    with pytest.raises(AnswerError, match="nested deeper"):
        evaluate("(" * 600 + "1" + ")" * 600)
    with pytest.raises(AnswerError, match="nested deeper"):
        evaluate("-" * 1500 + "1")


def test_overlong_text_is_refused() -> None:
    with pytest.raises(AnswerError, match="longer than"):
        evaluate("1 + " * 1000 + "1")


def test_non_text_is_refused() -> None:
    with pytest.raises(AnswerError, match="expected text"):
        evaluate(12)  # type: ignore[arg-type]


def test_tokens_keep_positions_and_percent() -> None:
    tokens = tokenize("$1,000 - 5%")
    assert [(t.kind, t.position, t.value, t.percent) for t in tokens] == [
        ("number", 0, 1000.0, False), ("-", 7, 0.0, False), ("number", 9, 5.0, True)]


def test_answer_error_is_a_loratune_error() -> None:
    assert issubclass(AnswerError, LoratuneError)


_ALPHABET = "0123456789+-*/()[]$%,. \t\nxe_"


@pytest.mark.parametrize("seed", range(4))
def test_fuzz_only_answer_errors(seed: int) -> None:
    """Random strings over the calculator's own alphabet (and some foreign characters): every one
    either evaluates to a finite float or raises AnswerError; nothing else escapes."""
    rng = random.Random(seed)
    outcomes = {"value": 0, "error": 0}
    for _ in range(5000):
        length = rng.randint(0, 30)
        text = "".join(rng.choice(_ALPHABET) if rng.random() < 0.95 else chr(rng.randint(0, 0x2FFF))
                       for _ in range(length))
        try:
            value = evaluate(text, rng.choice(["", "percent"]))
        except AnswerError:
            outcomes["error"] += 1
        else:
            assert isinstance(value, float) and math.isfinite(value)
            outcomes["value"] += 1
    assert outcomes["value"] > 50 and outcomes["error"] > 1000  # the fuzz reaches both outcomes


@pytest.mark.parametrize("seed", range(2))
def test_fuzz_structured_expressions_match_python(seed: int) -> None:
    """Well-formed random expressions (no accounting negatives) agree with Python's own arithmetic."""
    rng = random.Random(100 + seed)
    for _ in range(2000):
        expression = _random_expression(rng, 3)
        try:
            expected = eval(expression)  # the oracle, on text this test generated itself
        except ZeroDivisionError:
            with pytest.raises(AnswerError, match="division by zero"):
                evaluate(expression)
            continue
        assert evaluate(expression) == pytest.approx(expected, rel=1e-9, abs=1e-9)


def _random_expression(rng: random.Random, depth: int) -> str:
    if depth == 0 or rng.random() < 0.3:
        return f"{rng.randint(0, 999)}.{rng.randint(0, 99)}" if rng.random() < 0.5 else str(rng.randint(0, 50))
    left, right = _random_expression(rng, depth - 1), _random_expression(rng, depth - 1)
    operator = rng.choice("+-*/")
    text = f"{left} {operator} {right}"
    return f"({text})" if rng.random() < 0.5 else (f"-{text}" if rng.random() < 0.2 else text)

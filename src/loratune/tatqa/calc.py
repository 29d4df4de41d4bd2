"""Safe arithmetic for the calculations a TAT-QA model writes.

A model answers an arithmetic question with the calculation, not the result (see `render`), so the
arithmetic is exact rather than generated digit by digit. This module computes that calculation.
It never calls `eval()`: the text is tokenized and parsed by a small recursive-descent parser that
knows numbers, `+ - * /` and brackets, and nothing else, so a hostile or garbled answer can only
ever raise `AnswerError`.

What a number may look like (as the table cells and TAT-QA's own derivations write them):
- thousands separators in groups of three: `1,234.5`; a leading `$`: `$1,496.5`, `$ 1,452.4`;
- a `$` before an opening bracket is dropped too: `$(290.2 + 239.6)` (as some derivations write);
- an accounting negative: a number alone in parentheses, `(123)` or `($1,234)`, is -123 / -1,234.
  Brackets around anything else (`(3 - 2)`, `(-5)`, `[(4 + 4) / 2]`) are plain grouping;
- a trailing `%`, read against the scale of the answer (the convention the TAT-QA dev set's
  derivations follow): when the answer's scale is `percent` the answer is itself a number of
  percent, so `12%` is 12 (`(2.7% + 2.0% + 1.0%) / 3` is 1.9, the answer "1.9 percent");
  otherwise `12%` is a rate applied to an amount, 0.12 (`53% * $23,406` is 12,405.18).
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import NoReturn

from loratune.errors import AnswerError

MAX_LENGTH = 2000
"""Longer text is not a calculation; refusing it keeps the parser's work bounded."""
MAX_DEPTH = 50
"""Brackets and unary signs nest at most this deep, so hostile input cannot exhaust the stack."""

# ASCII digits only: Python's `\d` and float() also accept other scripts' digits, which no
# financial table here uses and which would make "what is a number" depend on Unicode tables.
_NUMBER = re.compile(
    r"(?P<dollar>\$\s*)?"
    r"(?P<digits>[0-9]{1,3}(?:,[0-9]{3})+(?:\.[0-9]+)?|[0-9]+(?:\.[0-9]+)?|\.[0-9]+)"
    r"(?![0-9,.])"
    r"(?P<percent>\s*%)?"
)
_SYMBOLS = frozenset("+-*/()[]")
_DOLLAR_BRACKET = re.compile(r"\$\s*(?=[(\[])")
_CLOSING = {"(": ")", "[": "]"}


@dataclass(frozen=True)
class Token:
    """One lexical unit: `kind` is "number" or the symbol itself; `value` is set for numbers."""

    kind: str
    position: int
    value: float = 0.0
    percent: bool = False


def tokenize(expression: str) -> list[Token]:
    """Split a calculation into numbers and symbols; any other character is an AnswerError."""
    if len(expression) > MAX_LENGTH:
        raise AnswerError(f"calculation: longer than {MAX_LENGTH} characters; not a calculation")
    tokens: list[Token] = []
    position = 0
    while position < len(expression):
        char = expression[position]
        if char.isspace():
            position += 1
        elif char in _SYMBOLS:
            tokens.append(Token(char, position))
            position += 1
        elif dollar := _DOLLAR_BRACKET.match(expression, position):
            position = dollar.end()  # `$(...)`: the currency sign says nothing about the value
        else:
            token, position = _number_at(expression, position)
            tokens.append(token)
    return tokens


def _number_at(expression: str, position: int) -> tuple[Token, int]:
    match = _NUMBER.match(expression, position)
    if match is None:
        raise AnswerError(f"calculation {_shown(expression)}: unexpected {_quote_at(expression, position)} "
                          f"at position {position}; only numbers, + - * / and brackets are allowed")
    value = float(match.group("digits").replace(",", ""))
    return Token("number", position, value, percent=match.group("percent") is not None), match.end()


def _shown(expression: str) -> str:
    return repr(expression if len(expression) <= 80 else expression[:77] + "...")


def _quote_at(expression: str, position: int) -> str:
    return repr(expression[position:position + 10])


class _Parser:
    """Recursive descent over the grammar

        sum     := product (("+" | "-") product)*
        product := signed (("*" | "/") signed)*
        signed  := ("+" | "-") signed | primary
        primary := number | "(" number ")" | "(" sum ")" | "[" sum "]"
    """

    def __init__(self, expression: str, tokens: list[Token], percent_as_written: bool) -> None:
        self.expression = expression
        self.tokens = tokens
        self.index = 0
        self.depth = 0
        self.percent_as_written = percent_as_written

    def parse(self) -> float:
        if not self.tokens:
            raise AnswerError("calculation: empty; expected numbers and + - * /")
        value = self.sum()
        if self.index < len(self.tokens):
            self.fail(self.tokens[self.index], "expected an operator or the end")
        return value

    def sum(self) -> float:
        value = self.product()
        while self.peek() in ("+", "-"):
            operator = self.take()
            right = self.product()
            value = value + right if operator.kind == "+" else value - right
        return value

    def product(self) -> float:
        value = self.signed()
        while self.peek() in ("*", "/"):
            operator = self.take()
            right = self.signed()
            value = value * right if operator.kind == "*" else self.divide(value, right, operator)
        return value

    def signed(self) -> float:
        if self.peek() in ("+", "-"):
            sign = self.take()
            operand = self.nested(self.signed)
            return -operand if sign.kind == "-" else operand
        return self.primary()

    def primary(self) -> float:
        token = self.take()
        if token.kind == "number":
            return self.number(token)
        if token.kind in _CLOSING:
            if token.kind == "(" and self.peek(0) == "number" and self.peek(1) == ")":
                negative = -self.number(self.take())  # (123): how statements write -123
                self.take()
                return negative
            value = self.nested(self.sum)
            self.expect(_CLOSING[token.kind], token)
            return value
        return self.fail(token, "expected a number or an opening bracket")

    def number(self, token: Token) -> float:
        return token.value if (self.percent_as_written or not token.percent) else token.value / 100

    def divide(self, left: float, right: float, operator: Token) -> float:
        if right == 0:
            raise AnswerError(f"calculation {_shown(self.expression)}: division by zero "
                              f"at position {operator.position}")
        return left / right

    def nested(self, parse: Callable[[], float]) -> float:
        self.depth += 1
        if self.depth > MAX_DEPTH:
            raise AnswerError(f"calculation: brackets or signs nested deeper than {MAX_DEPTH}")
        try:
            return parse()
        finally:
            self.depth -= 1

    def peek(self, ahead: int = 0) -> str | None:
        index = self.index + ahead
        return self.tokens[index].kind if index < len(self.tokens) else None

    def take(self) -> Token:
        if self.index >= len(self.tokens):
            raise AnswerError(f"calculation {_shown(self.expression)}: ends too early; expected a number or bracket")
        token = self.tokens[self.index]
        self.index += 1
        return token

    def expect(self, kind: str, opening: Token) -> None:
        if self.peek() != kind:
            raise AnswerError(f"calculation {_shown(self.expression)}: the {opening.kind!r} at position "
                              f"{opening.position} is not closed by {kind!r}")
        self.take()

    def fail(self, token: Token, wanted: str) -> NoReturn:
        raise AnswerError(f"calculation {_shown(self.expression)}: unexpected "
                          f"{_quote_at(self.expression, token.position)} at position {token.position}; {wanted}")


def evaluate(expression: str, scale: str = "") -> float:
    """The value of a calculation such as `(1,059,077 - 902,547) / 902,547 * 100`.

    `scale` is the answer's scale word; it only decides what a trailing `%` means (see the module
    docstring). Raises AnswerError for anything but plain arithmetic, for division by zero and for
    a result that is not a finite number.
    """
    if not isinstance(expression, str):
        raise AnswerError(f"calculation: expected text, got {type(expression).__name__}")
    parser = _Parser(expression, tokenize(expression), percent_as_written=scale == "percent")
    value = parser.parse()
    if not math.isfinite(value):
        raise AnswerError(f"calculation {_shown(expression)}: the result is not a finite number")
    return value

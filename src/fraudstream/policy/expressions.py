"""Analysts' rule expressions: a small language with a real grammar (``rules.lark``), never
``eval``, so a condition in a rules file can read features, text fields and named live lists
but nothing else in the process.

Missing data follows SQL's three-valued logic: a comparison with a missing value is unknown,
``not`` keeps it unknown, and only a known TRUE fires, so a rule never fires on missing data.
Keywords (``and or not in``) are case-insensitive; names are not.
"""

from __future__ import annotations

import difflib
import math
import operator
import re
from collections.abc import Callable, Collection, Mapping
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field
from importlib import resources
from typing import Any, Literal

import lark
import numpy as np

from fraudstream.features import FEATURE_NAMES

__all__ = ["NUMERIC_NAMES", "TEXT_FIELDS", "Expression", "ExpressionError", "list_names", "parse"]

NUMERIC_NAMES: tuple[str, ...] = FEATURE_NAMES
TEXT_FIELDS = ("card_id", "terminal_id", "channel", "merchant_category", "currency")
_MAX_LENGTH = 2_000  # characters: a rule is a sentence, not a program
_MAX_DEPTH = 50  # operators and parentheses inside each other; keeps evaluation's recursion shallow

_LIST_NAME = re.compile(r"[a-z][a-z0-9_]{0,62}")
_EXPECTED = {
    "$END": "the end", "NAME": "a name", "NUMBER": "a number", "STRING": "a string",
    "COMPARE": "a comparison", "_OR": "'or'", "_AND": "'and'", "_NOT": "'not'", "IN": "'in'",
    "PLUS": "'+'", "MINUS": "'-'", "TIMES": "'*'", "DIVIDE": "'/'", "COMMA": "','",
    "LPAR": "'('", "RPAR": "')'", "LSQB": "'['", "RSQB": "']'",
}  # fmt: skip
_HINTS = {
    ".": "attribute access is not part of the language", "=": "compare with ==",
    "&": "write 'and'", "|": "write 'or'", "!": "write 'not', or != to compare",
}  # fmt: skip
_PARSER = lark.Lark(
    resources.files("fraudstream.policy").joinpath("rules.lark").read_text(encoding="utf-8"),
    parser="lalr",
    propagate_positions=True,
)

_Type = Literal["number", "text", "bool"]
_Lists = Mapping[str, Collection[str]]
_A = {"number": "a number", "text": "text", "bool": "a true/false condition"}
_COMPARE: dict[str, Callable[[Any, Any], Any]] = {
    "<": operator.lt, "<=": operator.le, ">": operator.gt, ">=": operator.ge,
    "==": operator.eq, "!=": operator.ne,
}  # fmt: skip
_ARITH: dict[str, tuple[Callable[..., Any], Callable[[float, float], float]]] = {
    "+": (np.add, operator.add), "-": (np.subtract, operator.sub),
    "*": (np.multiply, operator.mul), "×": (np.multiply, operator.mul),
    "/": (np.divide, operator.truediv),
}  # fmt: skip


class ExpressionError(ValueError):
    """An expression that cannot be parsed or type-checked; the message names the position
    (column, or line and column) and what is wrong, so an analyst can fix the rules file."""


@dataclass(frozen=True)
class _Env:
    values: Mapping[str, Any]  # name → batch column or single value, already normalised
    lists: _Lists


@dataclass(frozen=True)
class _Node:
    """A type-checked piece of an expression with its two evaluators. ``batch``: a number is a
    float array (NaN = missing), text and bool are ``(values, known)`` pairs (a bool's value is
    False wherever it is unknown). ``row``: None is missing (or unknown)."""

    type: _Type
    batch: Callable[[_Env], Any]
    row: Callable[[_Env], Any]


@dataclass(frozen=True)
class Expression:
    """A parsed, type-checked condition (build it with `parse`); it keeps the names and lists it
    reads so a caller can fetch exactly those before evaluating."""

    source: str
    names: frozenset[str]  # fields and features the expression reads
    lists: frozenset[str]  # list names it reads
    _root: _Node = field(repr=False, compare=False)

    def evaluate(self, columns: Mapping[str, np.ndarray], lists: _Lists) -> np.ndarray:
        """Whether the condition is known TRUE on each row of a batch: ``columns`` maps each of
        `names` to a 1-D array (None/NaN = missing); a list absent from ``lists`` is empty."""
        lengths = {len(columns[name]) for name in self.names or columns}
        if len(lengths) != 1:
            raise ValueError(f"need columns of one length (the batch), got lengths {lengths}")
        size = lengths.pop()
        values = {name: _column(name, columns[name]) for name in self.names}
        value, _known = self._root.batch(_Env(values, lists))
        return np.array(np.broadcast_to(value, (size,)), dtype=bool)

    def evaluate_one(self, values: Mapping[str, float | str | None], lists: _Lists) -> bool:
        """`evaluate` for a single row without numpy (the decision API's fallback); it agrees
        with `evaluate` on every row."""
        row = {name: _scalar(name, values[name]) for name in self.names}
        return self._root.row(_Env(row, lists)) is True


def parse(source: str) -> Expression:
    """Parse and type-check ``source`` once, when the rules load, so a bad rule is refused with
    its position instead of failing on live traffic."""
    if not source.strip():
        raise ExpressionError("the expression is empty")
    if len(source) > _MAX_LENGTH:
        raise ExpressionError(f"the expression has {len(source)} characters; at most {_MAX_LENGTH}")
    try:
        tree = _PARSER.parse(source)
    except (lark.UnexpectedCharacters, lark.UnexpectedToken) as error:  # what LALR raises
        raise _syntax_error(source, error) from None
    _check_depth(source, tree)
    compiler = _Compiler(source)
    root = compiler.node(tree)
    if root.type != "bool":
        raise compiler.error(tree, f"a rule must be a true/false condition, got {_A[root.type]}")
    return Expression(source, frozenset(compiler.names), frozenset(compiler.lists), root)


def list_names(expression: Expression) -> frozenset[str]:
    """The live lists an expression reads, for the caller that must load them first."""
    return expression.lists


def _where(source: str, line: int | None, column: int | None) -> str:
    return f"line {line}, column {column}" if "\n" in source else f"column {column}"


def _syntax_error(
    source: str, error: lark.UnexpectedCharacters | lark.UnexpectedToken
) -> ExpressionError:
    where = _where(source, error.line, error.column)
    if isinstance(error, lark.UnexpectedCharacters):
        hint = f" ({_HINTS[error.char]})" if error.char in _HINTS else ""
        return ExpressionError(f"{where}: unexpected character {error.char!r}{hint}")
    expected = ", ".join(sorted(_EXPECTED.get(name, name) for name in error.expected))
    found = error.token
    if found.type == "$END":
        text = source.rstrip()
        where = _where(source, text.count("\n") + 1, len(text) - text.rfind("\n"))
        return ExpressionError(f"{where}: the expression ends early; expected {expected}")
    if found.type == "LPAR" and [t.type for t in error.token_history or ()][-1:] == ["NAME"]:
        return ExpressionError(f"{where}: function calls are not part of the language")
    return ExpressionError(f"{where}: unexpected {str(found)!r}; expected {expected}")


def _check_depth(source: str, tree: lark.Tree[lark.Token]) -> None:
    stack = [(tree, 1)]
    while stack:  # iterative: the check must not itself recurse on hostile input
        node, depth = stack.pop()
        if depth > _MAX_DEPTH:
            where = _where(source, node.meta.line, node.meta.column)
            raise ExpressionError(f"{where}: nested deeper than {_MAX_DEPTH} levels")
        stack.extend((kid, depth + 1) for kid in node.children if isinstance(kid, lark.Tree))


class _Compiler:
    """Type-checks the parse tree into `_Node`s and collects the names and lists it reads."""

    def __init__(self, source: str) -> None:
        self.source = source
        self.names: set[str] = set()
        self.lists: set[str] = set()

    def error(self, at: lark.Tree[lark.Token] | lark.Token, message: str) -> ExpressionError:
        place = at if isinstance(at, lark.Token) else at.meta
        return ExpressionError(f"{_where(self.source, place.line, place.column)}: {message}")

    def node(self, tree: lark.Tree[lark.Token]) -> _Node:
        kind, kids = str(tree.data), tree.children
        if kind in ("number", "string"):
            return _constant(_literal(tree))
        if kind == "name":
            return self.name(_token(kids[0]))
        if kind == "group":
            return self.node(_tree(kids[0]))
        if kind == "neg":  # -x is 0 - x: no comparison tells -0.0 from 0.0
            zero = _constant((0.0, "number"))
            return _arith("-", zero, self.operand(kids[1], "number", "'-'"))
        if kind in ("sum", "product"):
            result = self.operand(kids[0], "number", f"'{kids[1]}'")
            for op, right in zip(kids[1::2], kids[2::2], strict=True):
                result = _arith(str(op), result, self.operand(right, "number", f"'{op}'"))
            return result
        if kind == "compare":
            return self.compare(tree)
        if kind in ("in_", "not_in"):
            member = self.member(tree)
            return member if kind == "in_" else _not(member)
        if kind == "not_":
            return _not(self.operand(kids[0], "bool", "'not'"))
        parts = [self.operand(kid, "bool", f"'{kind.removesuffix('_expr')}'") for kid in kids]
        return _all(parts) if kind == "and_expr" else _any(parts)

    def operand(self, kid: lark.Tree[lark.Token] | lark.Token, want: _Type, what: str) -> _Node:
        node = self.node(_tree(kid))
        if node.type != want:
            raise self.error(_tree(kid), f"{what} needs {_A[want]}, got {_A[node.type]}")
        return node

    def name(self, token: lark.Token) -> _Node:
        name = str(token)
        if name not in NUMERIC_NAMES and name not in TEXT_FIELDS:
            close = difflib.get_close_matches(name, (*NUMERIC_NAMES, *TEXT_FIELDS), n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise self.error(token, f"unknown name {name!r}{hint}")
        self.names.add(name)

        def read(env: _Env) -> Any:
            return env.values[name]

        return _Node("text" if name in TEXT_FIELDS else "number", read, read)

    def compare(self, tree: lark.Tree[lark.Token]) -> _Node:
        left_tree, op, right_tree = tree.children
        left, right = self.node(_tree(left_tree)), self.node(_tree(right_tree))
        types = {left.type, right.type}
        if types != {"number"} and (op not in ("==", "!=") or types != {"text"}):
            wants = "two numbers or two texts" if op in ("==", "!=") else "two numbers"
            got = f"{_A[left.type]} and {_A[right.type]}"
            raise self.error(_token(op), f"'{op}' compares {wants}, got {got}")
        compare, numeric = _COMPARE[str(op)], left.type == "number"

        def batch(env: _Env) -> tuple[np.ndarray, np.ndarray]:
            a, a_known = _split(numeric, left.batch(env))
            b, b_known = _split(numeric, right.batch(env))
            known = a_known & b_known
            with np.errstate(invalid="ignore"):
                return np.asarray(compare(a, b), dtype=bool) & known, known

        def row(env: _Env) -> bool | None:
            a, b = left.row(env), right.row(env)
            return None if a is None or b is None else bool(compare(a, b))

        return _Node("bool", batch, row)

    def member(self, tree: lark.Tree[lark.Token]) -> _Node:
        left_tree, keyword, collection = tree.children
        left = self.node(_tree(left_tree))
        if left.type == "bool":
            raise self.error(_tree(left_tree), "'in' needs a number or text on its left")
        numeric, collection = left.type == "number", _tree(collection)
        name = str(collection.children[0]) if collection.data == "list_name" else ""
        fixed: tuple[float | str, ...] | None = None
        if name:
            if name in NUMERIC_NAMES or name in TEXT_FIELDS:
                raise self.error(collection, f"{name!r} is a field, not a list")
            if not _LIST_NAME.fullmatch(name):
                raise self.error(collection, f"{name!r} is not a list name ([a-z][a-z0-9_]*)")
            if numeric:
                raise self.error(_token(keyword), f"list {name!r} holds text, got a number")
            self.lists.add(name)
        else:
            literal = tuple(_literal(_tree(kid)) for kid in collection.children)
            for kid, (_value, kind) in zip(collection.children, literal, strict=True):
                if kind != left.type:
                    raise self.error(
                        _tree(kid), f"list item is {_A[kind]}, the left side {_A[left.type]}"
                    )
            fixed = tuple(value for value, _kind in literal)

        def items(env: _Env) -> Collection[Any]:
            return env.lists.get(name, ()) if fixed is None else fixed

        def batch(env: _Env) -> tuple[np.ndarray, np.ndarray]:
            values, known = _split(numeric, left.batch(env))
            pool = items(env)
            if numeric:
                hit = np.isin(values, np.asarray(tuple(pool), dtype=float))
            else:
                pool = pool if isinstance(pool, AbstractSet) else frozenset(pool)
                hit = np.fromiter((value in pool for value in np.atleast_1d(values)), dtype=bool)
            return hit & known, known

        def row(env: _Env) -> bool | None:
            value = left.row(env)
            return None if value is None else value in items(env)

        return _Node("bool", batch, row)


def _tree(kid: lark.Tree[lark.Token] | lark.Token | None) -> lark.Tree[lark.Token]:
    assert isinstance(kid, lark.Tree), kid  # the grammar aliases every operand to a tree
    return kid


def _token(kid: lark.Tree[lark.Token] | lark.Token | None) -> lark.Token:
    assert isinstance(kid, lark.Token), kid
    return kid


def _literal(tree: lark.Tree[lark.Token]) -> tuple[float | str, _Type]:
    token = _token(tree.children[-1])
    if tree.data == "string":
        return token[1:-1], "text"
    return (-float(token) if tree.data == "neg_number" else float(token)), "number"


def _constant(literal: tuple[float | str, _Type]) -> _Node:
    value, kind = literal
    batch = (value, np.True_) if kind == "text" else value
    return _Node(kind, lambda env: batch, lambda env: value)


def _column(name: str, data: np.ndarray) -> Any:
    if name not in TEXT_FIELDS:
        return np.asarray(data, dtype=float)
    text = np.asarray(data, dtype=object)
    return text, np.fromiter((isinstance(value, str) for value in text), bool, len(text))


def _scalar(name: str, value: float | str | None) -> float | str | None:
    if name in TEXT_FIELDS:
        return value if isinstance(value, str) else None
    number = math.nan if value is None else float(value)
    return None if math.isnan(number) else number


def _split(numeric: bool, value: Any) -> tuple[Any, Any]:
    return (value, ~np.isnan(value)) if numeric else value


def _arith(op: str, left: _Node, right: _Node) -> _Node:
    vector, scalar = _ARITH[op]

    def batch(env: _Env) -> Any:
        a, b = left.batch(env), right.batch(env)
        with np.errstate(all="ignore"):
            result = vector(a, b)
            return np.where(np.asarray(b) == 0, np.nan, result) if op == "/" else result

    def row(env: _Env) -> float | None:
        a, b = left.row(env), right.row(env)
        if a is None or b is None or (op == "/" and b == 0):
            return None  # division by zero is missing, like any other undefined number
        result = scalar(a, b)
        return None if math.isnan(result) else result

    return _Node("number", batch, row)


def _not(operand: _Node) -> _Node:
    def batch(env: _Env) -> tuple[np.ndarray, np.ndarray]:
        value, known = operand.batch(env)
        return known & ~value, known

    return _Node("bool", batch, lambda env: None if (v := operand.row(env)) is None else not v)


def _any(parts: list[_Node]) -> _Node:
    """Kleene ``or``: TRUE if any part is TRUE, FALSE if all are FALSE, otherwise unknown."""

    def batch(env: _Env) -> tuple[np.ndarray, np.ndarray]:
        value, known = parts[0].batch(env)
        for part in parts[1:]:
            other, other_known = part.batch(env)
            known = (known & other_known) | value | other
            value = value | other
        return value, known

    def row(env: _Env) -> bool | None:
        values = [part.row(env) for part in parts]
        return True if True in values else None if None in values else False

    return _Node("bool", batch, row)


def _all(parts: list[_Node]) -> _Node:
    """Kleene ``and``, by De Morgan: FALSE if any part is FALSE, TRUE if all are TRUE."""
    return _not(_any([_not(part) for part in parts]))

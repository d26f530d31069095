"""The calculator tool a chat model calls between `<|python_start|>` and `<|python_end|>`.

nanochat's models learn (midtraining, GSM8K, SpellingBee) to write arithmetic such as
`12*7+3` or a string method such as `'strawberry'.count('r')` and read the result back.
nanochat runs those with `eval` behind a character filter and a timeout; here the expression
is parsed with `ast` and walked by a small interpreter that knows only an allow-list of
node types, so nothing else can ever run. Written by hand because no library offers a
bounded, eval-free expression interpreter.

Every operation is checked for size *before* it is computed (`9**9**9`, `'a'*10**9`,
`'x'.replace('', 'y'*...)`), so any expression is refused or answered in microseconds.
"""
from __future__ import annotations

import ast
import math
import operator
import re

MAX_EXPRESSION_CHARS = 1000  # longer inputs are refused before parsing
MAX_NODES = 200  # ast nodes in one expression
MAX_INT_BITS = 4096  # ~1233 decimal digits; bounds every intermediate integer
MAX_STRING_CHARS = 10_000  # bounds every intermediate string

# The string methods nanochat's tasks use (count) and a few harmless relatives.
# Each maps to (number of positional arguments allowed, argument types).
STRING_METHODS: dict[str, tuple[range, type]] = {
    "count": (range(1, 2), str),
    "find": (range(1, 2), str),
    "index": (range(1, 2), str),
    "startswith": (range(1, 2), str),
    "endswith": (range(1, 2), str),
    "replace": (range(2, 3), str),
    "upper": (range(0, 1), str),
    "lower": (range(0, 1), str),
    "strip": (range(0, 1), str),
}

_ARITHMETIC = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv,
    ast.Mod: operator.mod,
    ast.Pow: operator.pow,
}
_UNARY = {ast.UAdd: operator.pos, ast.USub: operator.neg}

# Thousands separators ("1,234,567") appear in model-written arithmetic (nanochat strips
# commas too); outside string literals a comma between digits is never anything else here.
_STRING_LITERAL = re.compile(r"""('(?:[^'\\]|\\.)*'|"(?:[^"\\]|\\.)*")""")
_DIGIT_COMMA = re.compile(r"(?<=\d),(?=\d)")


class CalculatorError(ValueError):
    """The expression is not allowed or cannot be evaluated; the message says why, briefly."""


def safe_eval(expression: str) -> str:
    """Evaluate a calculator expression and return its value as text (Python's `str`).

    Allowed: int/float/str literals, + - * / // % ** and unary +/-, parentheses, and the
    string methods in STRING_METHODS called on a string. Anything else (names, other
    attributes, calls, subscripts, comprehensions, lambdas, f-strings, oversized numbers or
    strings, non-finite results) raises CalculatorError.
    """
    if not isinstance(expression, str):
        raise CalculatorError("expression must be a string")
    if len(expression) > MAX_EXPRESSION_CHARS:
        raise CalculatorError(f"expression longer than {MAX_EXPRESSION_CHARS} characters")
    parts = _STRING_LITERAL.split(expression.strip())
    # split() with a capturing group alternates code (even) and string literals (odd).
    source = "".join(p if i % 2 else _DIGIT_COMMA.sub("", p) for i, p in enumerate(parts))
    try:
        tree = ast.parse(source, mode="eval")
    except (SyntaxError, ValueError, RecursionError, MemoryError) as err:
        raise CalculatorError("not a valid expression") from err
    if sum(1 for _ in ast.walk(tree)) > MAX_NODES:
        raise CalculatorError(f"expression has more than {MAX_NODES} parts")
    try:
        value = _evaluate(tree.body)
    except CalculatorError:
        raise
    except ZeroDivisionError as err:
        raise CalculatorError("division by zero") from err
    except (ArithmeticError, ValueError, TypeError, RecursionError, MemoryError) as err:
        raise CalculatorError(f"cannot evaluate: {type(err).__name__}") from err
    if isinstance(value, float) and not math.isfinite(value):
        raise CalculatorError("result is not a finite number")
    return str(value)


def _evaluate(node: ast.AST):
    if isinstance(node, ast.Constant):
        if type(node.value) not in (int, float, str):  # bool, None, bytes, complex, Ellipsis
            raise CalculatorError(f"literal {node.value!r} is not allowed")
        return _checked(node.value)
    if isinstance(node, ast.UnaryOp) and type(node.op) in _UNARY:
        return _UNARY[type(node.op)](_number(_evaluate(node.operand)))
    if isinstance(node, ast.BinOp) and type(node.op) in _ARITHMETIC:
        return _binary(node.op, _evaluate(node.left), _evaluate(node.right))
    if isinstance(node, ast.Call):
        return _string_method(node)
    raise CalculatorError(f"{type(node).__name__} is not allowed")


def _binary(op: ast.operator, left, right):
    if isinstance(left, str) or isinstance(right, str):
        # Only concatenation and repetition; `%` on a string would be printf formatting.
        if isinstance(op, ast.Add) and isinstance(left, str) and isinstance(right, str):
            _check_length(len(left) + len(right))
            return left + right
        if isinstance(op, ast.Mult):
            text, times = (left, right) if isinstance(left, str) else (right, left)
            if isinstance(times, int) and isinstance(text, str):
                _check_length(len(text) * max(times, 0))
                return text * times
        raise CalculatorError(f"{type(op).__name__} is not allowed on strings")
    left, right = _number(left), _number(right)
    if isinstance(op, ast.Pow):
        _check_power(left, right)
    return _checked(_ARITHMETIC[type(op)](left, right))


def _check_power(base, exponent) -> None:
    """Refuse powers whose result would exceed the integer bound, without computing them."""
    if isinstance(base, int) and isinstance(exponent, int) and exponent > 0 and abs(base) > 1:
        if (abs(base).bit_length() - 1) * exponent > MAX_INT_BITS:
            raise CalculatorError(f"result larger than {MAX_INT_BITS} bits")


def _string_method(node: ast.Call) -> str | int | bool:
    func = node.func
    if not (isinstance(func, ast.Attribute) and func.attr in STRING_METHODS):
        raise CalculatorError("only string methods " + ", ".join(STRING_METHODS) + " may be called")
    if node.keywords:
        raise CalculatorError("keyword arguments are not allowed")
    arity, arg_type = STRING_METHODS[func.attr]
    target = _evaluate(func.value)
    if not isinstance(target, str):
        raise CalculatorError(f".{func.attr}() needs a string")
    args = [_evaluate(a) for a in node.args]
    if len(args) not in arity or not all(isinstance(a, arg_type) for a in args):
        raise CalculatorError(f".{func.attr}() takes {arity.start} string argument(s)")
    if func.attr == "replace":
        old, new = args
        occurrences = len(target) + 1 if old == "" else target.count(old)
        _check_length(len(target) + occurrences * (len(new) - len(old)))
    try:
        return getattr(target, func.attr)(*args)
    except ValueError as err:  # str.index on a missing substring
        raise CalculatorError(f".{func.attr}(): {err}") from err


def _number(value):
    if not isinstance(value, (int, float)):
        raise CalculatorError("arithmetic needs numbers")
    return value


def _checked(value):
    if type(value) not in (int, float, str):  # e.g. (-8) ** 0.5 is complex
        raise CalculatorError(f"result of type {type(value).__name__} is not allowed")
    if isinstance(value, int) and value.bit_length() > MAX_INT_BITS:
        raise CalculatorError(f"result larger than {MAX_INT_BITS} bits")
    if isinstance(value, str):
        _check_length(len(value))
    return value


def _check_length(n: int) -> None:
    if n > MAX_STRING_CHARS:
        raise CalculatorError(f"string longer than {MAX_STRING_CHARS} characters")

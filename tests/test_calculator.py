"""The calculator tool: right answers, refusals for everything else, and never a hang."""
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hf_nanochat.serve.calculator import MAX_INT_BITS, MAX_STRING_CHARS, CalculatorError, safe_eval


@pytest.mark.parametrize(
    "expression,expected",
    [
        ("1+2*3", "7"),
        ("(1+2)*3", "9"),
        ("10/4", "2.5"),
        ("7//2", "3"),
        ("-7 % 3", "2"),
        ("2**10", "1024"),
        ("2**-2", "0.25"),
        ("1,234,567 + 1", "1234568"),  # thousands separators, as models write them
        ("3.5 * 2", "7.0"),
        ("'strawberry'.count('r')", "3"),
        ("'a,b,c'.count(',')", "2"),  # commas inside strings are kept
        ("'Hello'.upper()", "HELLO"),
        ("'banana'.find('n')", "2"),
        ("'banana'.startswith('ba')", "True"),
        ("'ab' * 3 + 'c'", "abababc"),
        ("'x'.replace('', '-')", "-x-"),
    ],
)
def test_values(expression, expected):
    assert safe_eval(expression) == expected


@pytest.mark.parametrize(
    "expression,message",
    [
        ("9**9**9", "bits"),
        ("10**5000", "bits"),
        ("2**4096 * 2**4096", "bits"),
        ("'a' * 10**9", "string longer"),
        ("'ab' * 6000", "string longer"),
        ("('x'*9000).replace('x', 'yy')", "string longer"),
        ("'x'.replace('', 'y'*5000) ", "string longer"),
        ("1/0", "division by zero"),
        ("5 % 0", "division by zero"),
        ("1e308 * 10", "finite"),
        ("(-8) ** 0.5", "complex"),
        ("x + 1", "Name"),
        ("__import__('os').system('true')", "only string methods"),
        ("().__class__.__bases__", "Attribute"),
        ("'abc'.__class__", "Attribute"),
        ("'{}'.format(1)", "only string methods"),
        ("'%s' % 'a'", "not allowed on strings"),
        ("'banana'.count(sub='a')", "keyword"),
        ("'banana'.count(1)", "string argument"),
        ("(1).upper()", "needs a string"),
        ("[c for c in 'abc']", "ListComp"),
        ("lambda: 1", "Lambda"),
        ("f'{1+1}'", "JoinedStr"),
        ("'abc'[0]", "Subscript"),
        ("True + 1", "literal"),
        ("b'x'", "literal"),
        ("1 if 1 else 2", "IfExp"),
        ("import os", "not a valid expression"),
        ("1; 2", "not a valid expression"),
        ("'banana'.index('z')", "index"),
        ("1" * 2000, "longer than"),
        ("-" * 500 + "1", "parts"),
        ("(" * 300 + "1" + ")" * 300, "not a valid expression"),
    ],
)
def test_refusals(expression, message):
    with pytest.raises(CalculatorError, match=message):
        safe_eval(expression)


def test_bounds_are_the_documented_ones():
    assert safe_eval(f"2**{MAX_INT_BITS - 1}") == str(2 ** (MAX_INT_BITS - 1))
    with pytest.raises(CalculatorError):
        safe_eval(f"2**{MAX_INT_BITS}")
    assert len(safe_eval(f"'a'*{MAX_STRING_CHARS}")) == MAX_STRING_CHARS
    with pytest.raises(CalculatorError):
        safe_eval(f"'a'*{MAX_STRING_CHARS + 1}")


# --- properties ---------------------------------------------------------------------------------
# A hypothesis deadline turns a hang or a slow blow-up into a failure; nothing here is a benchmark.

NUMBERS = st.one_of(
    st.integers(-(10**30), 10**30).map(str),
    st.sampled_from(["9", "99", "999999999", "0", "0.5", "1e300", "2"]),
)
STRINGS = st.text(alphabet="abcrst, ", max_size=8).map(repr)


@st.composite
def expressions(draw, depth=0):
    """Random expressions from the calculator's own grammar, with hostile magnitudes."""
    if depth > 3 or draw(st.booleans()):
        return draw(st.one_of(NUMBERS, STRINGS))
    kind = draw(st.sampled_from(["bin", "unary", "method"]))
    if kind == "bin":
        op = draw(st.sampled_from(["+", "-", "*", "/", "//", "%", "**"]))
        return f"({draw(expressions(depth + 1))}) {op} ({draw(expressions(depth + 1))})"
    if kind == "unary":
        return f"-({draw(expressions(depth + 1))})"
    method = draw(st.sampled_from(["count", "upper", "replace", "find"]))
    args = {"count": 1, "upper": 0, "replace": 2, "find": 1}[method]
    arg_list = ", ".join(draw(STRINGS) for _ in range(args))
    return f"({draw(expressions(depth + 1))}).{method}({arg_list})"


@settings(max_examples=400, deadline=1000)
@given(expressions())
def test_grammar_expressions_match_python_or_are_refused(expression):
    try:
        result = safe_eval(expression)
    except CalculatorError:
        return
    # Success means every intermediate value stayed within the bounds, so Python's own
    # eval of the same text is cheap and must agree.
    assert result == str(eval(expression, {"__builtins__": {}}))  # noqa: S307 (test oracle)


@settings(max_examples=400, deadline=1000)
@given(st.text(alphabet="0123456789+-*/%().,' abcrstxyz_[]{}:;=<>!~^&|@`\"\\\nlambdimportos", max_size=80))
def test_arbitrary_text_never_escapes_or_hangs(text):
    try:
        result = safe_eval(text)
    except CalculatorError:
        return
    assert isinstance(result, str) and len(result) <= max(MAX_STRING_CHARS, MAX_INT_BITS)


@settings(max_examples=200, deadline=1000)
@given(st.integers(2, 10**6), st.integers(2, 10**6), st.integers(1, 10**6))
def test_towers_of_powers_are_refused_fast(a, b, c):
    try:
        safe_eval(f"{a}**{b}**{c}")
    except CalculatorError as err:
        assert "bits" in str(err)

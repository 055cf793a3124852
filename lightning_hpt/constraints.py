"""Constraints of a study: bounds on metrics the trials log, and rules on the parameters alone.

An **outcome constraint** (``constraints={"n_params": ("<=", 2e6)}``) bounds a metric the trial
logs; it is judged on the metric's value at the trial's best step, and a trial that breaks it is
recorded COMPLETE but infeasible (``attrs["infeasible"]`` says why): it is never best and never on
the Pareto front. A **parameter constraint** (``param_constraints=["model.width * model.depth <=
4096"]``, or a function of the configuration returning True when it is allowed) is checked before a
trial runs, so a configuration that breaks it never runs.
"""

from __future__ import annotations

import ast
import difflib
import math
import operator
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from lightning_hpt.exceptions import ConfigurationError

__all__ = [
    "OutcomeConstraint",
    "ParamConstraint",
    "constraints_from_json",
    "constraints_to_json",
    "outcome_constraints",
    "param_constraints",
    "rename_params",
    "violations",
]

_OPS: dict[str, Callable[[float, float], bool]] = {"<=": operator.le, ">=": operator.ge}


@dataclass(frozen=True)
class OutcomeConstraint:
    """``metric op bound`` on a metric a trial logs, e.g. ``n_params <= 2e6``.

    Attributes:
        metric: the metric's name, as logged with ``self.log``.
        op: ``"<="`` or ``">="``.
        bound: the bound.
    """

    metric: str
    op: str
    bound: float

    def holds(self, value: float | None) -> bool:
        """Whether ``value`` keeps the constraint (a missing or non-finite value does not)."""
        return value is not None and math.isfinite(value) and _OPS[self.op](value, self.bound)

    def slack(self, value: float) -> float:
        """How far inside the bound ``value`` is: >= 0 when the constraint holds (BoTorch's sign: <= 0 holds)."""
        return self.bound - value if self.op == "<=" else value - self.bound

    def __str__(self) -> str:
        return f"{self.metric} {self.op} {self.bound:g}"


@dataclass(frozen=True)
class ParamConstraint:
    """A rule on the parameters alone: an expression such as ``"model.width * model.depth <= 4096"`` or a function.

    Attributes:
        text: the expression, or ``"<function module.name>"`` for a function (how the study stores it).
        check: ``params -> bool``: True when the configuration is allowed.
    """

    text: str
    check: Callable[[Mapping[str, Any]], bool] = field(compare=False, repr=False)

    def holds(self, params: Mapping[str, Any], space: Mapping[str, Any] | None = None) -> bool:
        """Whether ``params`` is allowed; an error of the rule itself is raised as a ConfigurationError.

        ``space`` (the search space) lets the error for an absent conditional parameter show this rule
        with that parameter's condition tested first.
        """
        try:
            return bool(self.check(params))
        except KeyError as e:
            missing = e.args[0]
            when = getattr(space.get(missing), "when", None) if space is not None else None
            example = (
                f"'{_absent(when)} or {self.text}', true where {missing} is absent"
                if when
                else "'model.num_layers == 1 or model.width1 * model.width2 <= 2048', where width2 has"
                " when={model.num_layers: [2, 3]}"
            )
            raise ConfigurationError(
                f"param_constraints: {self.text!r} reads {missing!r}, which the configuration {dict(params)} does"
                f" not have: a conditional parameter is absent where its when= does not hold; make the rule hold"
                f" without it by testing first, with or, what is true where it is absent (e.g. {example})"
            ) from None
        except Exception as e:
            raise ConfigurationError(
                f"param_constraints: {self.text!r} cannot be evaluated on {dict(params)}: {type(e).__name__}: {e};"
                " fix the rule"
            ) from None

    def __str__(self) -> str:
        return self.text


def _absent(when: Mapping[str, Sequence[Any]]) -> str:
    """A rule's text that is true exactly where ``when`` does not hold: ``model.num_layers != 1``."""
    parts = [" and ".join(f"{parent} != {v!r}" for v in values) for parent, values in when.items()]
    return " or ".join(f"({p})" if " and " in p and len(parts) > 1 else p for p in parts)


def outcome_constraints(spec: Any, objectives: Sequence[str] = ()) -> tuple[OutcomeConstraint, ...]:
    """The outcome constraints of ``constraints={"metric": ("<=", bound), ...}`` (``None``: none).

    Raises:
        ConfigurationError: naming the entry, the rule and the fix.
    """
    if spec is None:
        return ()
    if not isinstance(spec, Mapping):
        raise ConfigurationError(
            "constraints must be a dict of metric bounds such as {'n_params': ('<=', 2e6)} (in a YAML search: section,"
            f" constraints: {{n_params: ['<=', 2.0e+6]}}), got constraints={spec!r}"
        )
    out = []
    for metric, rule in spec.items():
        example = f"{{{metric!r}: ('<=', 2e6)}} (in a YAML search: section, {metric}: ['<=', 2.0e+6])"
        if not isinstance(metric, str) or not metric:
            raise ConfigurationError(f"constraints: keys must be metric names, got {metric!r}; e.g. {example}")
        ok = isinstance(rule, Sequence) and not isinstance(rule, str) and len(rule) == 2
        op, bound = rule if ok else (None, None)
        if not ok or op not in _OPS or isinstance(bound, bool) or not isinstance(bound, (int, float)):
            raise ConfigurationError(
                f"constraints[{metric!r}] must be ('<=', bound) or ('>=', bound) with a number bound, got {rule!r};"
                f" e.g. {example}"
            )
        if not math.isfinite(bound):
            raise ConfigurationError(f"constraints[{metric!r}]: the bound must be finite, got {bound!r}")
        if metric in objectives:
            raise ConfigurationError(
                f"constraints[{metric!r}] bounds an objective, which a study cannot do; drop {metric!r} from monitor"
                " to keep it as a constraint, or, with several objectives, keep it an objective and give the bayes"
                " strategy the worst value worth having as its reference point (BayesianStrategy(ref_point=...),"
                " one value per objective), or bound another metric"
            )
        out.append(OutcomeConstraint(metric, op, float(bound)))
    return tuple(out)


def violations(constraints: Sequence[OutcomeConstraint], metrics: Mapping[str, float]) -> list[str]:
    """What each broken constraint reads, e.g. ``["n_params = 3.1e+06, not <= 2e+06"]``; ``[]``: all hold."""
    out = []
    for c in constraints:
        value = metrics.get(c.metric)
        if not c.holds(value):
            shown = "missing" if value is None else f"= {value:g}, not {c.op} {c.bound:g}"
            out.append(f"{c.metric} {shown}")
    return out


def param_constraints(spec: Any, names: Sequence[str]) -> tuple[ParamConstraint, ...]:
    """The parameter constraints of ``param_constraints=[...]``: expressions over ``names`` or functions.

    Raises:
        ConfigurationError: an entry that is neither, or an expression with another name or operation.
    """
    if spec is None:
        return ()
    if isinstance(spec, (str, Mapping)) or callable(spec) or not isinstance(spec, Sequence):
        raise ConfigurationError(
            "param_constraints must be a list of expressions such as 'model.width * model.depth <= 4096' or of"
            f" functions config -> bool, got param_constraints={spec!r}; wrap one in [...]"
        )
    out = []
    for rule in spec:
        if isinstance(rule, str):
            out.append(ParamConstraint(rule, _compile(rule, set(names))))
        elif callable(rule):
            name = f"{getattr(rule, '__module__', '?')}.{getattr(rule, '__qualname__', type(rule).__name__)}"
            out.append(ParamConstraint(f"<function {name}>", rule))
        else:
            raise ConfigurationError(
                f"param_constraints: {rule!r} is neither an expression (str) nor a function config -> bool"
            )
    return tuple(out)


# ----------------------------------------------------------------- expressions

_BIN = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv,
    ast.Mod: operator.mod,
    ast.Pow: operator.pow,
}
_CMP = {
    ast.Lt: operator.lt,
    ast.LtE: operator.le,
    ast.Gt: operator.gt,
    ast.GtE: operator.ge,
    ast.Eq: operator.eq,
    ast.NotEq: operator.ne,
}
_FUNCS: dict[str, Callable[..., Any]] = {"min": min, "max": max, "abs": abs}


def _dotted(node: ast.AST) -> str | None:
    """``model.width`` from its Attribute chain (or a bare Name), else ``None``."""
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if not isinstance(node, ast.Name):
        return None
    return ".".join([node.id, *reversed(parts)])


def _parse(text: str) -> ast.expr:
    try:
        return ast.parse(text, mode="eval").body
    except SyntaxError as e:
        raise ConfigurationError(
            f"param_constraints: {text!r} is not an expression: {e.msg}; a rule is arithmetic over the space's names"
            " that you compare with <, <=, >, >=, ==, !=, e.g. 'model.width * model.depth <= 4096'"
        ) from None


def _name_nodes(node: ast.AST) -> list[ast.AST]:
    """The nodes of ``node`` that read a parameter (``model.width``), as :func:`_compile` reads them."""
    if _dotted(node) is not None:
        return [node]
    children = node.args if isinstance(node, ast.Call) else list(ast.iter_child_nodes(node))
    return [n for child in children for n in _name_nodes(child)]


def rename_params(text: str, rename: Callable[[str], str]) -> str:
    """``text`` with each parameter name it reads replaced by ``rename(name)``, the rest kept as written.

    Example:
        >>> rename_params("model.width * 2 <= max(model.depth, 4)", lambda n: n.replace(".", ".init_args.", 1))
        'model.init_args.width * 2 <= max(model.init_args.depth, 4)'

    Raises:
        ConfigurationError: ``text`` is not an expression; what ``rename`` raises for a name.
    """
    lines = text.encode().splitlines(keepends=True)
    starts = [0]
    for line in lines:
        starts.append(starts[-1] + len(line))
    spans = []
    for node in _name_nodes(_parse(text)):
        begin = starts[node.lineno - 1] + node.col_offset  # offsets count UTF-8 bytes
        end = starts[node.end_lineno - 1] + node.end_col_offset  # type: ignore[operator]
        spans.append((begin, end, rename(_dotted(node))))  # type: ignore[arg-type]
    out = text.encode()
    for begin, end, name in sorted(spans, reverse=True):
        out = out[:begin] + name.encode() + out[end:]
    return out.decode()


def _compile(text: str, names: set[str]) -> Callable[[Mapping[str, Any]], bool]:
    """A checked expression as a function of the configuration (no ``eval``: a small tree walker)."""
    tree = _parse(text)

    def check(node: ast.AST) -> None:
        name = _dotted(node)
        if name is not None:
            if name not in names:
                near = difflib.get_close_matches(name, sorted(names), n=3)
                raise ConfigurationError(
                    f"param_constraints: {text!r} names {name!r}, which is not a parameter of the space {sorted(names)}"
                    + (f"; did you mean {near}?" if near else "")
                )
            return
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in _FUNCS:
            for a in node.args:
                check(a)
            return
        allowed = (ast.BoolOp, ast.UnaryOp, ast.BinOp, ast.Compare, ast.Constant, ast.And, ast.Or, ast.Not, ast.USub)
        if not isinstance(node, allowed) or (isinstance(node, ast.BinOp) and type(node.op) not in _BIN):
            raise ConfigurationError(
                f"param_constraints: {text!r} uses {type(node).__name__}; write arithmetic, comparisons, and/or/not,"
                f" min/max/abs over parameter names, or pass a function config -> bool instead"
            )
        if isinstance(node, ast.Compare) and any(type(op) not in _CMP for op in node.ops):
            raise ConfigurationError(f"param_constraints: {text!r}: only <, <=, >, >=, ==, != compare")
        for child in ast.iter_child_nodes(node):
            if not isinstance(child, (ast.operator, ast.cmpop, ast.boolop, ast.unaryop)):
                check(child)

    check(tree)
    _check_condition(tree, text)
    return lambda params: bool(_eval(tree, params))


def _check_condition(node: ast.AST, text: str) -> None:
    """Refuse a rule (or an operand of its and/or) that computes a number: it would allow every nonzero value."""
    if isinstance(node, ast.BoolOp):
        for value in node.values:
            _check_condition(value, text)
        return
    negated = isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub)
    number = negated or isinstance(node, (ast.BinOp, ast.Call))
    if number or (isinstance(node, ast.Constant) and not isinstance(node.value, bool)):
        part = ast.unparse(node)
        raise ConfigurationError(
            f"param_constraints: {text!r} computes a number ({part}), not a condition, so it would allow every"
            f" configuration where that number is nonzero; compare it, e.g. '{part} <= 4096'"
        )


def _eval(node: ast.AST, params: Mapping[str, Any]) -> Any:
    name = _dotted(node)
    if name is not None:
        return params[name]
    if isinstance(node, ast.Constant):
        return node.value
    if isinstance(node, ast.BinOp):
        return _BIN[type(node.op)](_eval(node.left, params), _eval(node.right, params))
    if isinstance(node, ast.UnaryOp):
        v = _eval(node.operand, params)
        return not v if isinstance(node.op, ast.Not) else -v
    if isinstance(node, ast.BoolOp):
        values = (_eval(v, params) for v in node.values)
        return all(values) if isinstance(node.op, ast.And) else any(values)
    if isinstance(node, ast.Call):
        return _FUNCS[node.func.id](*(_eval(a, params) for a in node.args))  # type: ignore[attr-defined]
    assert isinstance(node, ast.Compare)
    left = _eval(node.left, params)
    for op, right_node in zip(node.ops, node.comparators, strict=True):
        right = _eval(right_node, params)
        if not _CMP[type(op)](left, right):
            return False
        left = right
    return True


# ----------------------------------------------------------------- storage


def constraints_to_json(constraints: Sequence[OutcomeConstraint | ParamConstraint]) -> list[dict[str, Any]]:
    """How the study's definition stores its constraints."""
    out: list[dict[str, Any]] = []
    for c in constraints:
        if isinstance(c, OutcomeConstraint):
            out.append({"metric": c.metric, "op": c.op, "bound": c.bound})
        else:
            out.append({"params": c.text})
    return out


def constraints_from_json(data: Any) -> tuple[OutcomeConstraint | ParamConstraint, ...]:
    """The constraints stored by :func:`constraints_to_json`; a stored function cannot be called (only compared)."""
    out: list[OutcomeConstraint | ParamConstraint] = []
    for item in data or ():
        if "metric" in item:
            out.append(OutcomeConstraint(str(item["metric"]), str(item["op"]), float(item["bound"])))
        else:
            text = str(item["params"])
            out.append(ParamConstraint(text, _stored(text)))
    return tuple(out)


def _stored(text: str) -> Callable[[Mapping[str, Any]], bool]:
    """A stored rule, evaluable when it is an expression; a stored function's name only."""
    if text.startswith("<function "):

        def unavailable(params: Mapping[str, Any]) -> bool:
            raise ConfigurationError(f"{text} is stored by name only; pass it again in param_constraints")

        return unavailable
    tree = ast.parse(text, mode="eval").body
    return lambda params: bool(_eval(tree, params))

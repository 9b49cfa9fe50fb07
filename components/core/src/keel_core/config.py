"""Load YAML or JSON configuration into a schema, with errors that point at the text.

    >>> from keel_core.config import load_file
    >>> load_file("images/keel.yaml", ImageDefinition)            # doctest: +SKIP

Every problem names ``file:line:column``, the key path (``partitions.usr``) and what
was expected. Unknown keys are errors, with the closest known key suggested. Duplicate
keys, which YAML parsers usually resolve silently, are errors too.
"""

from __future__ import annotations

import difflib
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ValidationError
from pydantic_core import ErrorDetails

from keel_core.errors import ConfigError, ConfigProblem

M = TypeVar("M", bound=BaseModel)
_SCALARS = yaml.SafeLoader("")  # only its scalar constructors are used


def load_file(path: str | Path, model: type[M]) -> M:
    """Read ``path`` (YAML or JSON) and validate it as ``model``."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(
            [ConfigProblem(str(path), 1, 1, "", f"cannot read: {exc.strerror}")]
        ) from exc
    except UnicodeDecodeError as exc:
        raise ConfigError([ConfigProblem(str(path), 1, 1, "", f"not UTF-8 text: {exc}")]) from exc
    return load_text(text, model, filename=str(path))


def load_text(text: str, model: type[M], *, filename: str = "<string>") -> M:
    """Parse ``text`` (YAML, of which JSON is a subset) and validate it as ``model``."""
    root = _compose(text, filename)
    problems: list[ConfigProblem] = []
    data = _construct(root, filename, (), problems)
    if problems:
        raise ConfigError(problems)
    if data is None:
        data = {}
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(
            [_problem(err, root, model, filename) for err in exc.errors(include_url=False)]
        ) from None


def _compose(text: str, filename: str) -> yaml.Node | None:
    try:
        return yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line, col = (mark.line + 1, mark.column + 1) if mark else (1, 1)
        what = " ".join(p for p in (exc.context, exc.problem) if p)
        raise ConfigError(
            [ConfigProblem(filename, line, col, "", f"invalid YAML: {what}")]
        ) from None
    except yaml.YAMLError as exc:
        raise ConfigError([ConfigProblem(filename, 1, 1, "", f"invalid YAML: {exc}")]) from None


def _construct(
    node: yaml.Node | None,
    filename: str,
    path: tuple[str | int, ...],
    problems: list[ConfigProblem],
) -> Any:
    """Build plain Python data from a node tree, reporting duplicate keys."""
    if node is None:
        return None
    if isinstance(node, yaml.MappingNode):
        out: dict[Any, Any] = {}
        seen: dict[Any, yaml.Node] = {}
        for key_node, value_node in node.value:
            key = _construct(key_node, filename, path, problems)
            if key in seen:
                first = seen[key].start_mark.line + 1
                problems.append(
                    _at(
                        key_node,
                        filename,
                        (*path, key),
                        f"duplicate key (first given on line {first})",
                    )
                )
                continue
            seen[key] = key_node
            out[key] = _construct(value_node, filename, (*path, key), problems)
        return out
    if isinstance(node, yaml.SequenceNode):
        return [_construct(v, filename, (*path, i), problems) for i, v in enumerate(node.value)]
    return _SCALARS.construct_object(node, deep=True)


def _at(node: yaml.Node, filename: str, path: tuple[str | int, ...], message: str) -> ConfigProblem:
    mark = node.start_mark
    return ConfigProblem(filename, mark.line + 1, mark.column + 1, _dotted(path), message)


def _dotted(path: tuple[str | int, ...]) -> str:
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _find(
    root: yaml.Node | None, loc: tuple[str | int, ...], *, key: bool = False
) -> tuple[yaml.Node | None, bool]:
    """The node at ``loc``, or the deepest one found on the way (flag ``False``).

    With ``key=True`` a mapping entry's *key* node is returned for the last step, so that
    an unknown key is reported where the key is written, not where its value is.
    """
    node = root
    for i, step in enumerate(loc):
        if isinstance(node, yaml.MappingNode):
            for key_node, value_node in node.value:
                if getattr(key_node, "value", None) == str(step):
                    if key and i == len(loc) - 1:
                        return key_node, True
                    node = value_node
                    break
            else:
                return node, False
        elif (
            isinstance(node, yaml.SequenceNode) and isinstance(step, int) and step < len(node.value)
        ):
            node = node.value[step]
        else:
            return node, False
    return node, True


def _model_at(model: type[BaseModel] | None, loc: tuple[str | int, ...]) -> type[BaseModel] | None:
    """The model class that validates the mapping at ``loc``, if it is one."""
    current: Any = model
    for step in loc:
        current = _unwrap(current, step)
        if current is None:
            return None
    current = _unwrap(current, None)
    return current if isinstance(current, type) and issubclass(current, BaseModel) else None


def _unwrap(tp: Any, step: str | int | None) -> Any:
    """Follow one step of a location through a type: a field, a list item, a dict value."""
    if isinstance(tp, type) and issubclass(tp, BaseModel):
        if step is None:
            return tp
        if not isinstance(step, str):
            return None
        for name, info in tp.model_fields.items():
            if step in (name, info.alias):
                return info.annotation
        return None
    origin = typing.get_origin(tp)
    args = [a for a in typing.get_args(tp) if a is not type(None)]
    if origin in (list, tuple, set, frozenset) and args:
        return args[0] if isinstance(step, int) else tp
    if origin is dict and len(args) == 2:
        return args[1] if isinstance(step, str) and step is not None else tp
    models = [a for a in args if isinstance(a, type) and issubclass(a, BaseModel)]
    if len(models) == 1:  # Optional[Model] or Model | something
        return _unwrap(models[0], step)
    return tp if step is None else None


def _known_keys(model: type[BaseModel] | None) -> list[str]:
    if model is None:
        return []
    return sorted(info.alias or name for name, info in model.model_fields.items())


def _problem(
    err: ErrorDetails, root: yaml.Node | None, model: type[BaseModel], filename: str
) -> ConfigProblem:
    loc = tuple(p for p in err["loc"] if isinstance(p, str | int))
    kind = err["type"]
    if kind == "extra_forbidden":
        node, _ = _find(root, loc, key=True)
        unknown = str(loc[-1])
        known = _known_keys(_model_at(model, loc[:-1]))
        close = difflib.get_close_matches(unknown, known, n=1, cutoff=0.6)
        if close:
            hint = f"did you mean {close[0]!r}?"
        else:
            hint = "known keys: " + ", ".join(known) if known else "no keys are allowed here"
        message = f"unknown key {unknown!r}; {hint}"
    elif kind == "missing":
        node, _ = _find(root, loc[:-1])
        message = f"missing required key {str(loc[-1])!r}"
    else:
        node, _ = _find(root, loc)
        got = err.get("input")
        shown = (
            f" (got {got!r})" if isinstance(got, str | int | float | bool) or got is None else ""
        )
        message = f"{err['msg']}{shown}"
    if node is None:
        return ConfigProblem(filename, 1, 1, _dotted(loc), message)
    return _at(node, filename, loc, message)

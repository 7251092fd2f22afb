"""The one checker of recipe values: a mapping a recipe wrote, checked against the annotated parameters it is for.

A recipe's nested blocks (`dataset_mixture:`, the blocks of `prepare_data`) become keyword arguments of a
dataclass or a library's class. Before anything runs, every key must be one of its parameters (an unknown key
names the closest valid one), and choices (`Literal`), booleans and numbers must have the type the annotation
says; strings, mappings and lists are passed on as written, for the class to read. `RecipeParser` checks its
top-level keys with the same `value_fits` and `expected_type`, on the annotation of each argparse action.

Only the standard library is imported here: `llm_recipes.recipe`, which every script imports, imports this module.
"""

import inspect
import types
import typing
from typing import Any

# The types a value is checked against; an annotation that admits anything else (str, dict, a class) admits any value.
CHECKED_TYPES = {int, float, bool, type(None)}
# What argparse's `string_to_bool` reads as a boolean.
BOOLEAN_WORDS = ("true", "false", "yes", "no", "1", "0")


def annotation_types(annotation) -> set:
    """The types an annotation admits: the members of a union, a generic's origin (`list[str]` -> list)."""
    if annotation is None:
        return set()
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union:
        return set().union(*(annotation_types(a) for a in typing.get_args(annotation)))
    return {typing.get_origin(annotation) or annotation}


def expected_type(annotation) -> str | None:
    """What a parameter annotated `annotation` accepts, in words, or None when it accepts anything."""
    if typing.get_origin(annotation) is typing.Literal:
        return "one of " + ", ".join(map(repr, typing.get_args(annotation)))
    allowed = annotation_types(annotation)
    if not allowed or not allowed <= CHECKED_TYPES:
        return None
    if bool in allowed:
        return "true or false"
    return "a number" if float in allowed else "an integer"


def value_fits(annotation, value, from_text: bool = False) -> bool:
    """Whether `value`, as the recipe wrote it, suits a parameter annotated `annotation`. `from_text` is for values
    that argparse still converts (a recipe's top-level keys): a string it converts ('1e-3', 'yes') fits too."""
    if typing.get_origin(annotation) is typing.Literal:
        choices = typing.get_args(annotation)
        if from_text:
            return str(getattr(value, "value", value)) in {str(c) for c in choices}
        return value in choices
    allowed = annotation_types(annotation)
    if not allowed or not allowed <= CHECKED_TYPES:
        return True
    if value is None:
        return type(None) in allowed
    if bool in allowed:
        return isinstance(value, bool) or (from_text and str(value).lower() in BOOLEAN_WORDS)
    if isinstance(value, bool):
        return False  # YAML's true is no number
    if float in allowed:
        return isinstance(value, (int, float)) or (from_text and _converts(float, value))
    return isinstance(value, int) or (from_text and _converts(int, str(value)))


def _converts(convert, value) -> bool:
    try:
        convert(value)
    except (TypeError, ValueError):
        return False
    return True


def parameter_annotations(target, skip: tuple[str, ...] = ()) -> tuple[dict[str, Any], list[str]]:
    """{parameter: annotation (None when it has none)} of `target` (a dataclass, a class or a function), in order,
    and the parameters without a default. A dataclass's parameters are its fields."""
    parameters = {name: p for name, p in inspect.signature(target).parameters.items()
                  if name not in skip and name != "self" and p.kind is not p.VAR_KEYWORD}
    try:
        hints = typing.get_type_hints(target.__init__ if inspect.isclass(target) else target)
    except (NameError, TypeError):  # an annotation that cannot be resolved: check keys only
        hints = {}
    required = [name for name, p in parameters.items() if p.default is p.empty]
    return {name: hints.get(name) for name in parameters}, required


def checked_values(target, values: Any, where: str, skip: tuple[str, ...] = (), required: bool = False,
                   list_valid_keys: bool = True) -> dict:
    """`values` (a recipe's mapping; null for none) as keyword arguments of `target`, or a `RecipeError` that names
    the key at `where`: an unknown key with the closest valid one (and the valid keys, with `list_valid_keys`), a
    value of the wrong type with what it expects, a missing key without a default (with `required`). YAML lists
    become tuples where the annotation admits a tuple (datatrove calls `str.endswith` on some)."""
    from llm_recipes.recipe import RecipeError, unknown_key_message  # recipe.py imports this module

    if values is None:
        values = {}
    if not isinstance(values, dict):
        raise RecipeError(f"{where}: expected a mapping of keyword arguments, got {values!r}.")
    annotations, without_default = parameter_annotations(target, skip)
    hint = {"help_hint": f"Valid keys: {', '.join(annotations)}."} if list_valid_keys else {}
    checked = {}
    for key, value in values.items():
        if key not in annotations:
            raise RecipeError(unknown_key_message(key, annotations, where, **hint))
        annotation = annotations[key]
        if not value_fits(annotation, value):
            if value is None and typing.get_origin(annotation) is not typing.Literal:
                raise RecipeError(f"{where}.{key}: may not be null.")
            raise RecipeError(f"{where}.{key}: expects {expected_type(annotation)}, got {value!r}.")
        if isinstance(value, list) and tuple in annotation_types(annotation):
            value = tuple(tuple(v) if isinstance(v, list) else v for v in value)
        checked[key] = value
    for key in without_default if required else ():
        if key not in values:
            raise RecipeError(f"{where}: missing required key '{key}'.")
    return checked

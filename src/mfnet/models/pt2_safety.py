"""Checks that a ``.pt2`` ExportedProgram archive holds only data before ``torch.export.load`` reads it.

``torch.export.load`` can run code from the file in several ways: weights or constants marked ``use_pickle``
are read with ``torch.load(weights_only=False)``, custom and opaque objects are unpickled, sample inputs that
``weights_only=True`` refuses are read again without it, AOTInductor packages load native libraries, symbolic
shape expressions go through ``sympy.sympify`` (``eval``), a graph node may call any attribute of ``torch``
(``torch.os.system``), and ``guards_code`` is ``exec``-ed when the program becomes a module. An archive as
``mfnet export --format torch-export`` writes it uses none of these, so ``check_pt2_archive`` accepts exactly
that layout and refuses anything else before a byte of it is unpickled or evaluated:

* entries: one root folder holding the format and version files, ``models/model.json``, the weights and
  constants configs with raw tensor files (``weight_N``, ``tensor_N``), ``data/sample_inputs/model.pt`` and
  text files under ``extra/``; nothing else (no AOTInductor, legacy or second-model entries, no duplicates);
* every weight and constant is a raw tensor (``use_pickle: false``);
* the sample inputs load with ``torch.load(weights_only=True)``;
* every graph node calls an ATen or prims operator, or one of a few arithmetic helpers;
* every symbolic expression is made of numbers, symbol names, arithmetic and known sympy constructors;
* ``guards_code`` is empty.
"""

from __future__ import annotations

import ast
import builtins
import io
import json
import os
import re
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from mfnet.errors import CheckpointError

_FIXED_ENTRIES = frozenset(
    {
        "archive_format",
        "archive_version",
        "byteorder",
        ".data/version",
        ".data/serialization_id",
        "models/model.json",
        "data/weights/model_weights_config.json",
        "data/constants/model_constants_config.json",
        "data/sample_inputs/model.pt",
    }
)
_DATA_ENTRY = re.compile(r"(data/weights/weight_\d+|data/constants/tensor_\d+|extra/[A-Za-z0-9_.-]+)")
_PAYLOAD_NAME = {"weights": re.compile(r"weight_\d+"), "constants": re.compile(r"tensor_\d+")}
_OPERATOR_TARGET = re.compile(r"torch\.ops\.(aten|prims)\.[A-Za-z0-9_]+\.[A-Za-z0-9_]+")
_HELPER_TARGETS = frozenset(
    {f"_operator.{name}" for name in ("getitem", "add", "sub", "mul", "truediv", "floordiv", "mod", "neg", "pow")}
    | {f"_operator.{name}" for name in ("eq", "ne", "lt", "le", "gt", "ge", "and_", "or_", "not_")}
    | {f"torch.{name}" for name in ("sym_max", "sym_min", "sym_not", "sym_float", "sym_int", "sym_ite", "sym_sum")}
    | {f"math.{name}" for name in ("ceil", "floor", "trunc", "sqrt")}
)
_SYMPY_CALLS = frozenset(
    {
        "Symbol", "Integer", "Float", "Rational", "Add", "Mul", "Pow", "Mod", "Max", "Min", "Abs",
        "Eq", "Ne", "Lt", "Le", "Gt", "Ge", "And", "Or", "Not", "floor", "ceiling",
        "FloorDiv", "ModularIndexing", "CleanDiv", "CeilToInt", "FloorToInt", "IntTrueDiv", "FloatTrueDiv",
        "PowByNatural", "FloatPow", "TruncToInt", "TruncToFloat", "RoundToInt", "Identity", "ToFloat",
        "PythonMod", "CeilDiv", "IsNonOverlappingAndDenseIndicator", "Where",
    }
)  # fmt: skip
_SAFE_NODES = (
    ast.Expression, ast.Call, ast.Name, ast.Constant, ast.keyword, ast.Load, ast.BinOp, ast.UnaryOp,
    ast.Compare, ast.BoolOp, ast.operator, ast.unaryop, ast.cmpop, ast.boolop,
)  # fmt: skip
_BUILTIN_NAMES = frozenset(dir(builtins))


def check_pt2_archive(path: str | os.PathLike[str]) -> None:
    """Raises ``CheckpointError`` unless ``path`` is an ExportedProgram archive that holds only data.

    Nothing in the file is unpickled except the sample inputs, with ``weights_only=True``.

    Raises:
        CheckpointError: Not a readable zip archive, or an entry, payload, graph call or expression that
            loading could turn into running code; the message names it.
    """
    path = Path(path)
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
            root = _check_entries(path, names)
            configs = {
                kind: _read_json(archive, path, f"{root}data/{kind}/model_{kind}_config.json")
                for kind in ("weights", "constants")
            }
            program = _read_json(archive, path, f"{root}models/model.json")
            sample_inputs = archive.read(f"{root}data/sample_inputs/model.pt")
    except (zipfile.BadZipFile, OSError, KeyError, EOFError) as err:
        raise CheckpointError(
            f"{path} is not an ExportedProgram archive ({_first_line(err)}); re-export it with "
            "`mfnet export --format torch-export`"
        ) from None
    for kind, config in configs.items():
        _check_payloads(path, kind, config)
    _check_sample_inputs(path, sample_inputs)
    _check_program(path, program)


def _refuse(path: Path, what: str) -> CheckpointError:
    return CheckpointError(
        f"{path} is refused: {what}, and loading it could run code; only ExportedPrograms as "
        "`mfnet export --format torch-export` writes them are loaded (or use an .onnx or .safetensors file)"
    )


def _check_entries(path: Path, names: list[str]) -> str:
    """Returns the archive's root folder (``name/``) after checking every entry against the layout."""
    if not names:
        raise CheckpointError(f"{path} is an empty zip archive, not an ExportedProgram; re-export it")
    if len(set(names)) != len(names):
        raise _refuse(path, "it has duplicate entries")
    root = names[0].split("/", 1)[0] + "/"
    for name in names:
        if name.endswith("/"):
            continue
        if not name.startswith(root):
            raise _refuse(path, f"entry {name!r} lies outside the archive folder {root!r}")
        inner = name[len(root) :]
        if inner not in _FIXED_ENTRIES and not _DATA_ENTRY.fullmatch(inner):
            raise _refuse(path, f"it contains {inner!r}, which is not part of a plain ExportedProgram")
    for required in ("archive_format", "models/model.json", "data/weights/model_weights_config.json"):
        if root + required not in names:
            raise CheckpointError(f"{path} has no {required}: it is not an ExportedProgram; re-export it")
    return root


def _read_json(archive: zipfile.ZipFile, path: Path, name: str) -> Any:
    try:
        return json.loads(archive.read(name).decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise CheckpointError(f"{path}: {name} is not valid JSON ({_first_line(err)}); re-export it") from None


def _check_payloads(path: Path, kind: str, config: Any) -> None:
    entries = config.get("config") if isinstance(config, dict) else None
    if not isinstance(entries, dict):
        raise CheckpointError(f"{path}: the {kind} config has no 'config' table; re-export it")
    for fqn, meta in entries.items():
        if not isinstance(meta, dict) or meta.get("use_pickle") is not False:
            raise _refuse(path, f"{kind[:-1]} {fqn!r} is stored as a pickle")
        if not _PAYLOAD_NAME[kind].fullmatch(str(meta.get("path_name", ""))):
            raise _refuse(path, f"{kind[:-1]} {fqn!r} is stored as {meta.get('path_name')!r}, not a raw tensor")


def _check_sample_inputs(path: Path, data: bytes) -> None:
    if not data:
        return
    try:
        torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as err:  # anything weights_only refuses would be unpickled without it by torch.export.load
        raise _refuse(path, f"its sample inputs are not plain tensors ({_first_line(err)})") from None


def _check_program(path: Path, program: Any) -> None:
    if not isinstance(program, dict):
        raise CheckpointError(f"{path}: models/model.json is not an ExportedProgram; re-export it")
    if program.get("guards_code"):
        raise _refuse(path, "it carries guard code")
    for name in program.get("range_constraints") or {}:
        if not str(name).isidentifier() or str(name).startswith("_"):
            raise _refuse(path, f"its range constraint {name!r} is not a symbol name")
    for key, value in _strings(program):
        if key == "target" and not (_OPERATOR_TARGET.fullmatch(value) or value in _HELPER_TARGETS):
            raise _refuse(path, f"a graph node calls {value!r}, which is not an ATen operator")
        if key == "expr_str" and not _is_plain_expression(value):
            raise _refuse(path, f"the symbolic expression {value[:60]!r} is not plain arithmetic")


def _strings(obj: Any, key: str | None = None) -> Iterator[tuple[str | None, str]]:
    """Yields ``(key, string)`` for every string in a JSON value, with the dict key it sits under."""
    if isinstance(obj, str):
        yield key, obj
    elif isinstance(obj, dict):
        for k, v in obj.items():
            yield from _strings(v, k)
    elif isinstance(obj, list):
        for v in obj:
            yield from _strings(v, key)


def _is_plain_expression(text: str) -> bool:
    """Whether ``text`` is arithmetic over numbers, symbol names and known sympy constructors (nothing to run)."""
    try:
        tree = ast.parse(text, mode="eval")
    except (SyntaxError, ValueError):
        return False
    for node in ast.walk(tree):
        if not isinstance(node, _SAFE_NODES):
            return False
        if isinstance(node, ast.Call) and not (isinstance(node.func, ast.Name) and node.func.id in _SYMPY_CALLS):
            return False
        if isinstance(node, ast.Name) and (node.id.startswith("_") or node.id in _BUILTIN_NAMES):
            return False
        if isinstance(node, ast.keyword) and (node.arg is None or node.arg.startswith("_")):
            return False
    return True


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__

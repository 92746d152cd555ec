"""Running an exported artifact (``mfnet export``'s ONNX file or ``torch.export`` ExportedProgram) on clips.

``load_exported(path)`` opens either as an :class:`ExportedRunner`, a callable ``(N, C, T, H, W) -> (N, K)`` on
CPU with the mfnet metadata stored at export (``runner.meta``). A ``.pt2`` is checked to hold only data before
``torch.export.load`` reads it (``mfnet.models.pt2_safety``).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from mfnet.errors import MfnetError
from mfnet.models.pt2_safety import check_pt2_archive

META_KEY = "mfnet"  # ONNX metadata_props key / ExportedProgram extra file holding the mfnet meta as JSON


class ExportedRunner:
    """Runs an exported artifact on clip batches: ``runner(x (N, C, T, H, W)) -> logits (N, K)`` on CPU.

    Attributes:
        path: The artifact.
        meta: The mfnet meta stored at export (``{}`` if none): ``model``, ``num_classes``, ``classes``, ...
        input_shape: The graph's input shape; a dynamic batch is ``None`` (others are fixed sizes).
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        if self.path.exists() and not self.path.is_file():
            raise MfnetError(f"{self.path} is not a regular file (a folder, FIFO or device): give the exported file")
        if not self.path.is_file():
            raise MfnetError(f"no exported model at {self.path}: check the path or run `mfnet export` first")
        if self.path.suffix.lower() == ".onnx":
            self._init_onnx()
        else:
            self._init_program()

    def _init_onnx(self) -> None:
        try:
            import onnxruntime as ort
        except ImportError:
            raise MfnetError("running an ONNX model needs onnxruntime: pip install 'mfnet[onnx]'") from None
        try:
            self._session = ort.InferenceSession(str(self.path), providers=["CPUExecutionProvider"])
        except Exception as err:
            raise MfnetError(
                f"ONNX Runtime cannot load {self.path} ({err}); re-export it with `mfnet export`"
            ) from None
        meta = self._session.get_modelmeta().custom_metadata_map.get(META_KEY, "{}")
        self.meta = json.loads(meta)
        (inp,) = self._session.get_inputs()
        self._input_name = inp.name
        self.input_shape = tuple(d if isinstance(d, int) else None for d in inp.shape)
        self._program = None

    def _init_program(self) -> None:
        extra = {META_KEY: ""}
        check_pt2_archive(self.path)  # torch.export.load can run code from a crafted file: refuse those first
        try:
            program = torch.export.load(str(self.path), extra_files=extra)
        except Exception as err:
            raise MfnetError(
                f"{self.path} is not an ExportedProgram torch.export can load ({type(err).__name__}); "
                "re-export it with `mfnet export --format torch-export`"
            ) from None
        self.meta = json.loads(extra[META_KEY] or "{}")
        (spec,) = [
            s
            for s in program.graph_signature.input_specs
            if s.kind == torch.export.graph_signature.InputKind.USER_INPUT
        ]
        example = next(n for n in program.graph.nodes if n.op == "placeholder" and n.name == spec.arg.name)
        shape = example.meta["val"].shape
        self.input_shape = tuple(int(d) if isinstance(d, int) else None for d in shape)
        self._program = program.module()

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self._program is not None:
            with torch.no_grad():
                return self._program(x)
        out = self._session.run(None, {self._input_name: x.detach().cpu().float().numpy()})[0]
        return torch.from_numpy(out)


def load_exported(path: str | Path) -> ExportedRunner:
    """Opens an ``.onnx`` file or an ExportedProgram as an ``ExportedRunner``."""
    return ExportedRunner(path)

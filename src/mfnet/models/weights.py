"""What weights expect, and the weights registry: named records of released checkpoints.

Two kinds of data live here, both plain dataclasses:

* :class:`InputSpec`: how clips must be cut and pre-processed for a set of weights (frames, interval, crop,
  resize, normalisation, test protocol). Every checkpoint mfnet writes stores one in its ``"mfnet"`` metadata as
  ``"input_spec"``, so ``predict``, ``features``, ``eval`` and ``export`` can use the weights as they were trained.
* :class:`WeightsRecord`: one released checkpoint, named ``<architecture>.<tag>`` (``mfnet3d.k400_authors``):
  the architecture and its arguments, the file and where it can come from (Hugging Face Hub, plain URLs, the
  authors' original links as provenance), its sha256 where known, class names, the :class:`InputSpec`, parameter
  and MAC counts, the paper's metric and our re-evaluated one, licence and citation.

Finding and checking the file of a record is ``mfnet.models.hub``'s job; this module holds data only.
"""

from __future__ import annotations

import dataclasses
import difflib
from dataclasses import dataclass, field
from typing import Any

from mfnet.errors import MfnetError
from mfnet.labels import load_labels

TEST_PROTOCOLS = ("keep-aspect", "authors")


@dataclass(frozen=True)
class InputSpec:
    """The clips a set of weights expects.

    Attributes:
        frames: Frames per clip ``T`` (1 for image models).
        interval: Frames between consecutive clip frames.
        crop_size: Square crop ``H = W`` fed to the model.
        resize: Before cropping: the short side (int), or a fixed ``[height, width]``.
        normalization: A normalisation of ``mfnet.data.transforms`` (``"mfnet"``, ``"imagenet"``, ``"none"``).
        test_protocol: The evaluation geometry: ``"keep-aspect"`` (short side to ``resize``, centre crop) or
            ``"authors"`` (every frame squashed to ``resize`` = ``[256, 256]`` ignoring aspect, centre crop).
    """

    frames: int = 16
    interval: int = 2
    crop_size: int = 224
    resize: int | tuple[int, int] = 256
    normalization: str = "mfnet"
    test_protocol: str = "keep-aspect"

    def __post_init__(self) -> None:
        if isinstance(self.resize, list):  # read back from JSON
            object.__setattr__(self, "resize", tuple(int(v) for v in self.resize))

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able dict (``resize`` as an int or a ``[height, width]`` list)."""
        out = dataclasses.asdict(self)
        out["resize"] = list(self.resize) if isinstance(self.resize, tuple) else self.resize
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> InputSpec:
        """The inverse of :meth:`to_dict`; keys this version does not know are ignored (newer files)."""
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})

    def replace(self, **changes: Any) -> InputSpec:
        """A copy with fields changed (``None`` values are ignored)."""
        return dataclasses.replace(self, **{k: v for k, v in changes.items() if v is not None})

    @property
    def eval_resize(self) -> int | tuple[int, int]:
        """The resize of the evaluation transform: the short side, or ``(height, width)`` for ``"authors"``."""
        if self.test_protocol == "authors" and isinstance(self.resize, int):
            return (self.resize, self.resize)
        return self.resize

    def input_shape(self, batch: int = 1) -> tuple[int, ...]:
        """``(N, 3, T, H, W)`` of a batch of clips (``(N, 3, H, W)`` for an image spec with one frame)."""
        if self.frames == 1:
            return (batch, 3, self.crop_size, self.crop_size)
        return (batch, 3, self.frames, self.crop_size, self.crop_size)

    def describe(self) -> str:
        """One short phrase: ``16 frames every 2, resize 256x256 (authors), crop 224, mfnet normalisation``."""
        resize = "x".join(map(str, self.resize)) if isinstance(self.resize, tuple) else f"short side {self.resize}"
        return (
            f"{self.frames} frames every {self.interval}, resize {resize} ({self.test_protocol}), "
            f"crop {self.crop_size}, {self.normalization} normalisation"
        )


# The paper's test setting (Chen et al., ECCV 2018; the authors' evaluation code): 16 frames 2 apart, every
# frame squashed to 256x256, centre crop 224, the authors' normalisation. Checkpoints without an InputSpec get it.
PAPER_INPUT = InputSpec(16, 2, 224, (256, 256), "mfnet", "authors")
PAPER_IMAGE_INPUT = InputSpec(1, 1, 224, 256, "mfnet", "keep-aspect")


def check_input_spec(spec: InputSpec) -> None:
    """Raises ``MfnetError`` for sizes that are not positive or an unknown protocol."""
    sizes = [spec.frames, spec.interval, spec.crop_size]
    sizes += list(spec.resize) if isinstance(spec.resize, tuple) else [spec.resize]
    if min(sizes) <= 0:
        raise MfnetError(f"invalid clip spec ({spec.describe()}): frames, interval, crop and resize must be positive")
    if spec.test_protocol not in TEST_PROTOCOLS:
        raise MfnetError(f"unknown test protocol {spec.test_protocol!r}: use one of {', '.join(TEST_PROTOCOLS)}")


@dataclass(frozen=True)
class Metric:
    """An accuracy measured on a named validation list.

    Attributes:
        top1: Video top-1 in percent.
        dataset: What it was measured on (``"Kinetics-400 val"``, ``"UCF-101 split 1 test"``).
        top5: Video top-5 in percent, when known.
        protocol: Clips x crops and geometry (``"10 clips x 1 crop, 16x224x224"``).
        source: Where the number comes from (the paper's table, a file name, our run).
    """

    top1: float
    dataset: str
    top5: float | None = None
    protocol: str = ""
    source: str = ""


@dataclass(frozen=True)
class WeightsRecord:
    """A released checkpoint and everything needed to use it.

    Attributes:
        name: ``<architecture>.<tag>``, e.g. ``mfnet3d.k400_authors``.
        architecture: A registered model name (``mfnet.list_models()``).
        num_classes: Classes of the classifier.
        file: The file name (in the cache and on the Hub).
        arch_kwargs: Builder arguments besides ``num_classes``.
        sha256: The file's SHA-256 (hex) where known; a file that does not match is refused.
        hf_repo: A Hugging Face Hub model repository ``ORG/NAME`` holding ``hf_file``.
        hf_file: The file in ``hf_repo`` (default: ``file``).
        hf_revision: A branch, tag or commit of ``hf_repo``.
        urls: Plain download URLs, tried in order after the Hub.
        provenance: The authors' original links (not downloaded: they are short links to a file host).
        labels: A shipped label list (``kinetics400``, ``ucf101``, ``hmdb51``) or ``None``.
        input_spec: The clips the weights expect.
        params: Learnable parameters.
        macs: Multiply-adds of one forward pass on ``input_spec``'s clip.
        paper_metric: The accuracy the paper or the authors report.
        measured_metric: Our re-evaluation (``None`` until measured).
        license: The weights' licence.
        citation: BibTeX of the paper.
        description: One sentence.
        default: Whether ``create_model(architecture, pretrained=True)`` picks this record.
    """

    name: str
    architecture: str
    num_classes: int
    file: str
    arch_kwargs: dict[str, Any] = field(default_factory=dict)
    sha256: str | None = None
    hf_repo: str | None = None
    hf_file: str | None = None
    hf_revision: str | None = None
    urls: tuple[str, ...] = ()
    provenance: tuple[str, ...] = ()
    labels: str | None = None
    input_spec: InputSpec = PAPER_INPUT
    params: int | None = None
    macs: int | None = None
    paper_metric: Metric | None = None
    measured_metric: Metric | None = None
    license: str = ""
    citation: str = ""
    description: str = ""
    default: bool = False

    def classes(self) -> list[str] | None:
        """The class names, when the record names a shipped list."""
        return load_labels(self.labels) if self.labels is not None else None

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able dict of every field (``input_spec`` and metrics as dicts)."""
        out = dataclasses.asdict(self)
        out["input_spec"] = self.input_spec.to_dict()
        out["urls"], out["provenance"] = list(self.urls), list(self.provenance)
        return out


CITATION = """@inproceedings{chen2018multifiber,
  title={Multi-Fiber Networks for Video Recognition},
  author={Chen, Yunpeng and Kalantidis, Yannis and Li, Jianshu and Yan, Shuicheng and Feng, Jiashi},
  booktitle={European Conference on Computer Vision (ECCV)},
  year={2018}
}"""
_AUTHORS_REPO = "https://github.com/cypw/PyTorch-MFNet"
_AUTHORS_LICENSE = "MIT (the authors' repository, cypw/PyTorch-MFNet)"
_PAPER = "Chen et al., ECCV 2018"

_WEIGHTS: dict[str, WeightsRecord] = {}


def register_weights(record: WeightsRecord) -> WeightsRecord:
    """Adds ``record`` to the registry; a name registered twice raises ``ValueError``."""
    if record.name in _WEIGHTS:
        raise ValueError(f"weights {record.name!r} are registered twice")
    arch, sep, tag = record.name.partition(".")
    if not sep or not tag or arch != record.architecture:
        raise ValueError(f"weights name {record.name!r} must be '{record.architecture}.<tag>'")
    _WEIGHTS[record.name] = record
    return record


def unregister_weights(name: str) -> None:
    """Removes a record (for tests and plug-ins that registered their own)."""
    _WEIGHTS.pop(name, None)


def list_weights(architecture: str | None = None) -> list[str]:
    """Names of all registered weights (of one architecture), sorted."""
    return sorted(n for n, r in _WEIGHTS.items() if architecture is None or r.architecture == architecture)


def is_weights_name(name: str) -> bool:
    """Whether ``name`` is a registered record."""
    return name in _WEIGHTS


def get_weights(name: str) -> WeightsRecord:
    """The record ``name``; an unknown name raises ``MfnetError`` with the closest names."""
    try:
        return _WEIGHTS[name]
    except KeyError:
        close = difflib.get_close_matches(name, _WEIGHTS, n=3)
        hint = f"did you mean {', '.join(close)}?" if close else "run `mfnet weights list` to see them."
        raise MfnetError(f"unknown weights {name!r}: {hint}") from None


def record_for_file(file_name: str) -> WeightsRecord | None:
    """The record whose file has this name (e.g. the authors' ``MFNet3D_Kinetics-400_72.8.pth``), or ``None``."""
    return next((r for r in _WEIGHTS.values() if r.file == file_name), None)


def default_weights(architecture: str) -> WeightsRecord | None:
    """The record ``create_model(architecture, pretrained=True)`` uses, or ``None``."""
    return next((r for r in _WEIGHTS.values() if r.architecture == architecture and r.default), None)


def _authors_3d(tag: str, *, num_classes: int, file: str, link: str, labels: str, metric: Metric, what: str) -> None:
    register_weights(
        WeightsRecord(
            name=f"mfnet3d.{tag}",
            architecture="mfnet3d",
            num_classes=num_classes,
            file=file,
            provenance=(link, _AUTHORS_REPO),
            labels=labels,
            input_spec=PAPER_INPUT,
            params=7_996_368 - (400 - num_classes) * 769,  # the classifier has 768 inputs and a bias
            macs=11_045_449_728 - (400 - num_classes) * 768,
            paper_metric=metric,
            license=_AUTHORS_LICENSE,
            citation=CITATION,
            description=f"The authors' MF-Net 3D {what} (PyTorch 0.4 file, `module.` keys).",
            default=tag == "k400_authors",
        )
    )


_authors_3d(
    "k400_authors",
    num_classes=400,
    file="MFNet3D_Kinetics-400_72.8.pth",
    link="https://goo.gl/QdE85T",
    labels="kinetics400",
    metric=Metric(72.8, "Kinetics-400 val", protocol="video-level, 16x224x224 clips", source=_PAPER),
    what="trained on Kinetics-400 from inflated ImageNet weights",
)
_authors_3d(
    "ucf101_s1_authors",
    num_classes=101,
    file="MFNet3D_UCF-101_Split-1_96.3.pth",
    link="https://goo.gl/mML2gv",
    labels="ucf101",
    metric=Metric(96.3, "UCF-101 split 1 test", source="the authors' file name (the paper: 96.0, 3-split mean)"),
    what="fine-tuned from Kinetics-400 on UCF-101 split 1",
)
_authors_3d(
    "hmdb51_s1_authors",
    num_classes=51,
    file="MFNet3D_HMDB51_Split-1_75.8.pth",
    link="https://goo.gl/cD4hnw",
    labels="hmdb51",
    metric=Metric(75.8, "HMDB51 split 1 test", source="the authors' file name (the paper: 74.6, 3-split mean)"),
    what="fine-tuned from Kinetics-400 on HMDB51 split 1",
)
register_weights(
    WeightsRecord(
        name="mfnet2d.in1k_authors",
        architecture="mfnet2d",
        num_classes=1000,
        file="MFNet2D_ImageNet1k-0000.pth",
        provenance=("https://goo.gl/h5jG3B", _AUTHORS_REPO),
        input_spec=PAPER_IMAGE_INPUT,
        params=5_716_488,
        macs=859_379_712,
        paper_metric=Metric(74.6, "ImageNet-1k val", top5=92.0, protocol="single crop 224", source=_PAPER),
        license=_AUTHORS_LICENSE,
        citation=CITATION,
        description="The authors' MF-Net 2D (N=16) trained on ImageNet-1k: the initialisation of mfnet3d.",
        default=True,
    )
)

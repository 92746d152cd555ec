"""``mfnet models`` and ``mfnet summary``: list and inspect the registered models."""

from __future__ import annotations

import argparse

import torch

from mfnet import count_macs, count_params, create_model
from mfnet.cli._common import parse_shape, positive_int, print_json
from mfnet.errors import MfnetError
from mfnet.models import list_models
from mfnet.models.registry import get_builder


def register(commands: argparse._SubParsersAction, groups: dict[str, argparse._SubParsersAction]) -> None:
    """Adds ``models`` and ``summary``."""
    p = commands.add_parser("models", help="list the registered models")
    p.add_argument("--json", action="store_true", help="print a JSON object")
    p.set_defaults(handler=_models)

    p = commands.add_parser(
        "summary",
        help="parameters, multiply-adds and output shape of a model",
        description="Builds MODEL with random weights (or --weights) and prints its parameters, multiply-adds "
        "(the paper's 'FLOPs') for one forward pass on --input, and the output shape.",
    )
    p.add_argument("model", help="a name from `mfnet models`")
    p.add_argument(
        "--input", type=parse_shape, default=None, help="input shape, default 1x3x16x224x224 (3D) or 1x3x224x224 (2D)"
    )
    p.add_argument(
        "--num-classes", type=positive_int, default=None, help="classes of the classifier (default: the model's)"
    )
    p.add_argument("--weights", default=None, help="checkpoint to load (its class count is used)")
    p.add_argument("--fibers", type=positive_int, default=None, help="fibers per unit (ablation; default 16)")
    p.add_argument("--no-multiplexer", action="store_true", help="drop the multiplexers (ablation)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(handler=_summary)


def _models(args: argparse.Namespace) -> int:

    names = list_models()
    if args.json:
        print_json({"models": names})
        return 0
    for name in names:
        doc = (get_builder(name).__doc__ or "").strip().splitlines()
        print(f"{name:<18} {doc[0] if doc else ''}")
    return 0


def _summary(args: argparse.Namespace) -> int:

    kwargs = {}
    if args.fibers is not None:
        kwargs["fibers"] = args.fibers
    if args.no_multiplexer:
        kwargs["multiplexer"] = False
    model = create_model(args.model, num_classes=args.num_classes, weights=args.weights, **kwargs).eval()
    shape = args.input or ((1, 3, 16, 224, 224) if model.input_ndim == 5 else (1, 3, 224, 224))
    if len(shape) not in (4, 5) or shape[1] != 3:
        raise MfnetError(f"input {'x'.join(map(str, shape))} is not NxCxTxHxW or NxCxHxW with 3 channels")
    try:
        with torch.no_grad():
            out = model(torch.zeros(shape))
    except RuntimeError as err:
        raise MfnetError(
            f"{args.model} cannot run on input {'x'.join(map(str, shape))} ({str(err).splitlines()[0]}); "
            "use a larger clip, e.g. 1x3x16x224x224"
        ) from None
    params, macs = count_params(model), count_macs(model, shape)
    info = {
        "model": args.model,
        "num_classes": model.num_classes,
        "input": list(shape),
        "output": list(out.shape),
        "params": params,
        "macs": macs,
    }
    if args.json:
        print_json(info)
    else:
        print(f"model        {args.model}")
        print(f"input        {'x'.join(map(str, shape))}")
        print(f"output       {'x'.join(map(str, out.shape))}")
        print(f"parameters   {params:,} ({params / 1e6:.2f} M)")
        print(f"multiply-adds {macs:,} ({macs / 1e9:.2f} G)")
    return 0

"""Export a trained model for open_clip: a weights-only file and an open_clip model config.

Stage: `train` (after training). In: a run directory (its `ckpt_latest.pt`) or any weights file
train/weights.py reads (`--model` where the file carries no architecture). Out, in `--out DIR`: `NAME.pt`, the
model's state dict alone (fp32 tensors under open_clip's key names: no optimizer, RNG or config, so it loads
with `torch.load(weights_only=True)`), and `NAME.json`, the open_clip model config with `head_width` written
out (open_clip derives the vision head count from it; its default of 64 would load a model with other heads
without an error). With the config registered, `open_clip.create_model(NAME, pretrained=DIR/NAME.pt)` gives
the features our model gives (open_clip_torch 3.3.0, checked by hand; tests re-import the files with
train/weights.py, not with open_clip). NAME defaults to `witbuild-<run directory name>`.

Run: python -m train.export runs/b32 --out exported/      (prints the two lines to type in Python)
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import torch

from train.train import CKPT
from train.weights import WeightsError, load_weights, to_open_clip_config


def checkpoint_of(run_or_ckpt: str) -> Path:
    """A run directory means its latest checkpoint; anything else is the file itself."""
    path = Path(run_or_ckpt)
    return path / CKPT if path.is_dir() else path


def export(run_or_ckpt: str, out: str | Path, name: str | None = None, model: str | None = None) -> tuple[Path, Path]:
    """Write OUT/NAME.pt and OUT/NAME.json; returns their paths. WeightsError if the weights cannot be read."""
    source = checkpoint_of(run_or_ckpt)
    weights = load_weights(source, model)
    name = name or f"witbuild-{source.resolve().parent.name}"
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    weights_path, config_path = out / f"{name}.pt", out / f"{name}.json"
    state_dict = {k: v.detach().to("cpu", torch.float32).contiguous() for k, v in weights.state_dict.items()}
    tmp = weights_path.with_name(weights_path.name + ".tmp")
    torch.save(state_dict, tmp)
    os.replace(tmp, weights_path)
    config_path.write_text(json.dumps(to_open_clip_config(weights.model), indent=2) + "\n")
    return weights_path, config_path


def usage_lines(weights_path: Path, config_path: Path) -> str:
    """What a user types in Python to get the exported model from open_clip."""
    return (f"import open_clip; open_clip.add_model_config({str(config_path)!r})\n"
            f"model, _, preprocess = open_clip.create_model_and_transforms({config_path.stem!r}, "
            f"pretrained={str(weights_path)!r})")


def main(argv: list[str] | None = None) -> tuple[Path, Path]:
    parser = argparse.ArgumentParser(description="Export weights + an open_clip model config for open_clip.")
    parser.add_argument("run_or_ckpt", metavar="RUN_OR_CKPT", help="a run directory or a weights file")
    parser.add_argument("--out", required=True, help="directory for NAME.pt and NAME.json")
    parser.add_argument("--name", help="model name (default: witbuild-<run directory name>)")
    parser.add_argument("--model", help="architecture of a file that carries none (ViT-B-32, a config JSON)")
    args = parser.parse_args(argv)
    try:
        paths = export(args.run_or_ckpt, args.out, args.name, args.model)
    except WeightsError as e:
        parser.exit(2, f"export: {e}\n")
    print(f"wrote {paths[0]} and {paths[1]}; in Python, with open_clip_torch installed:\n{usage_lines(*paths)}")
    return paths


if __name__ == "__main__":
    main()

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

import torch

from pipeline.common import files

from train.train import CKPT
from train.weights import WeightsError, load_weights, to_open_clip_config


def checkpoint_of(run_or_ckpt: str) -> str:
    """A run directory means its latest checkpoint; anything else is the file itself."""
    path = str(run_or_ckpt)
    return files.join(path, CKPT) if files.isdir(path) else path


def export(run_or_ckpt: str, out: str, name: str | None = None, model: str | None = None) -> tuple[str, str]:
    """Write OUT/NAME.pt and OUT/NAME.json (local or fsspec URLs, each written whole or not at all); returns their
    paths. WeightsError if the weights cannot be read."""
    source = checkpoint_of(run_or_ckpt)
    weights = load_weights(source, model)
    name = name or f"witbuild-{files.folder_name(source)}"
    out = str(out)
    files.makedirs(out)
    weights_path, config_path = files.join(out, f"{name}.pt"), files.join(out, f"{name}.json")
    state_dict = {k: v.detach().to("cpu", torch.float32).contiguous() for k, v in weights.state_dict.items()}
    with files.atomic_write(weights_path) as f:
        torch.save(state_dict, f)
    files.write_text(config_path, json.dumps(to_open_clip_config(weights.model), indent=2) + "\n")
    return weights_path, config_path


def usage_lines(weights_path: str, config_path: str) -> str:
    """What a user types in Python to get the exported model from open_clip (it reads local files: copy the
    two files down first if they are on an object store)."""
    model_name = files.name(config_path)[:-len(".json")]
    return (f"import open_clip; open_clip.add_model_config({config_path!r})\n"
            f"model, _, preprocess = open_clip.create_model_and_transforms({model_name!r}, "
            f"pretrained={weights_path!r})")


def main(argv: list[str] | None = None) -> tuple[str, str]:
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

"""Model weights in: our checkpoints, open_clip's and OpenAI's files, through one loader.

Stage: `train` (`--init`), `zeroshot` (`--checkpoint`), `dedup` (`--embed-checkpoint`) and `export` all call
`load_weights`. In: a file and, where the file does not carry its architecture, a model spec (`--model`). Out:
the state dict under our (= open_clip's) key names, the `ModelCfg`, the step and the file's format.

Formats (DESIGN.md, "Interoperability facts"; open_clip 3.3.0's `factory.load_state_dict` reads the same):
- `ours`: a train/train.py checkpoint `{"model", "config", "step", ...}`; it carries its architecture.
- `state_dict`: a plain state dict (open_clip's released `pretrained` files, our `train.export` output).
- `open_clip`: open_clip's training checkpoint `{"epoch", "name", "state_dict", "optimizer", ...}`.
- `openai`: OpenAI's released TorchScript archive (ViT-B-32.pt), or a state dict taken from one (it has the
  entries `input_resolution`, `context_length`, `vocab_size`); fp16. Their towers use QuickGELU.
Keys prefixed `module.` (DDP) or `_orig_mod.` (torch.compile) are unwrapped.

A model spec (`--model`) is a name of a file in train/configs/open_clip/ (open_clip's model configs, copied
unchanged: ViT-B-32, ViT-B-16, ViT-L-14; a `-quickgelu` suffix switches the activation, as open_clip's
`*-quickgelu.json` do), a path to an open_clip model config JSON (`train.export` writes one) or a path to one
of our train configs (train/configs/*.json). A file whose keys or shapes differ from the architecture stops
with one line naming the first difference; it never loads partly.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import pickle
import zipfile
from pathlib import Path

import torch

from pipeline.common import files
from train import config as config_lib
from train.config import ModelCfg, TextCfg, VisionCfg

log = logging.getLogger("train.weights")

OPEN_CLIP_CONFIGS = Path(__file__).resolve().parent / "configs" / "open_clip"
OPENAI_EXTRA_KEYS = ("input_resolution", "context_length", "vocab_size")   # in OpenAI's archives, not weights
WRAPPER_PREFIXES = ("module.", "_orig_mod.")    # DDP, torch.compile
# open_clip config options our model does not have, with the values at which their model is ours
# (open_clip 3.3.0 model.py, CLIPVisionCfg / CLIPTextCfg defaults)
VISION_FIXED = {"ls_init_value": None, "attentional_pool": False, "no_ln_pre": False, "pos_embed_type": "learnable",
                "final_ln_after_pool": False, "pool_type": "tok", "act_kwargs": None, "norm_kwargs": None,
                "block_type": None, "qk_norm": False, "scaled_cosine_attn": False, "scale_heads": False,
                "scale_attn_inner": False, "scale_attn": False, "scale_fc": False, "timm_model_name": None}
TEXT_FIXED = {"hf_tokenizer_name": None, "tokenizer_mode": None, "tokenizer_kwargs": None, "ls_init_value": None,
              "embed_cls": False, "no_causal_mask": False, "final_ln_after_pool": False, "pool_type": "argmax",
              "proj_bias": False, "proj_type": "linear", "act_kwargs": None, "norm_kwargs": None, "block_type": None,
              "qk_norm": False, "scaled_cosine_attn": False, "scale_heads": False, "scale_attn_inner": False,
              "scale_attn": False, "scale_fc": False, "hf_model_name": None}
TOP_FIXED = {"custom_text": False, "init_logit_bias": None, "multimodal_cfg": None, "text_pool_type": None}
# options that do not change the weights or the eval-time features
IGNORED = {"patch_dropout", "output_tokens", "attn_pooler_queries", "attn_pooler_heads", "timm_model_pretrained",
           "timm_pool", "timm_proj", "timm_proj_bias", "timm_drop", "timm_drop_path", "pad_id", "eos_id",
           "hf_model_pretrained", "hf_proj_type", "hf_pooler_type", "init_logit_scale", "cast_dtype", "notes"}


class WeightsError(ValueError):
    """A weights file cannot be used as given; the message (one line) says which file and what to change."""


@dataclasses.dataclass(frozen=True)
class Weights:
    state_dict: dict[str, torch.Tensor]
    model: ModelCfg
    format: str                 # "ours" | "state_dict" | "open_clip" | "openai"
    step: int | None            # our checkpoints' training step, else None
    path: str


# ---- architectures -----------------------------------------------------------------------------------------

def model_config(spec: str) -> ModelCfg:
    """`--model`: an open_clip config name (train/configs/open_clip/NAME.json, `-quickgelu` suffix allowed), an
    open_clip model config file, or one of our train configs; WeightsError if it is none of these."""
    name, quick_gelu = (spec[:-len("-quickgelu")], True) if spec.endswith("-quickgelu") else (spec, None)
    path = OPEN_CLIP_CONFIGS / f"{name}.json"
    if not path.is_file():
        path, quick_gelu = Path(spec), None
    if not path.is_file():
        known = ", ".join(Path(p).stem for p in files.find(str(OPEN_CLIP_CONFIGS), ".json"))
        raise WeightsError(f"--model {spec}: neither a known name ({known}, each also with -quickgelu) nor a file")
    try:
        values = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise WeightsError(f"--model {spec}: not a JSON file ({e})") from None
    if not isinstance(values, dict) or not ("vision_cfg" in values or "model" in values):
        raise WeightsError(f"--model {spec}: neither an open_clip model config (vision_cfg, text_cfg) "
                           "nor a train config")
    try:
        if "vision_cfg" in values:
            cfg = from_open_clip_config(values, str(path))
        else:
            cfg = config_lib.from_dict({"model": values["model"]}).model
    except WeightsError:
        raise
    except (ValueError, TypeError, KeyError, AttributeError) as e:   # unknown keys, missing embed_dim, wrong types
        raise WeightsError(f"--model {spec}: not a usable model config ({type(e).__name__}: {e})") from None
    return dataclasses.replace(cfg, quick_gelu=True) if quick_gelu else cfg


def from_open_clip_config(values: dict, where: str) -> ModelCfg:
    """An open_clip model config (model_configs/*.json) as our ModelCfg; WeightsError for what we cannot build."""
    vision, text = dict(values.get("vision_cfg", {})), dict(values.get("text_cfg", {}))
    for part, fixed, cfg_values in (("", TOP_FIXED, values), ("vision_cfg.", VISION_FIXED, vision),
                                    ("text_cfg.", TEXT_FIXED, text)):
        for key, value in cfg_values.items():
            if key in fixed and value != fixed[key] and not (key == "block_type" and value == "default"):
                raise WeightsError(f"{where}: {part}{key}={value!r} is an open_clip option our model does not have")
    image_size = vision.get("image_size", 224)
    if isinstance(image_size, list):
        if len(set(image_size)) != 1:
            raise WeightsError(f"{where}: non-square vision_cfg.image_size {image_size} is not supported")
        image_size = image_size[0]
    width = vision.get("width", 768)
    head_width = vision.get("head_width", 64)           # open_clip: heads = width // head_width
    if not isinstance(vision.get("layers", 12), int) or width % head_width:
        raise WeightsError(f"{where}: a ResNet tower or width {width} not a multiple of head_width {head_width}")
    known = set(VISION_FIXED) | set(TEXT_FIXED) | set(TOP_FIXED) | IGNORED | {
        "embed_dim", "quick_gelu", "vision_cfg", "text_cfg", "image_size", "layers", "width", "head_width",
        "mlp_ratio", "patch_size", "context_length", "vocab_size", "heads"}
    unknown = sorted(k for d in (values, vision, text) for k in d if k not in known)
    if unknown:
        raise WeightsError(f"{where}: unknown open_clip config keys {unknown}")
    return ModelCfg(
        embed_dim=values["embed_dim"], quick_gelu=bool(values.get("quick_gelu", False)),
        vision=VisionCfg(image_size=image_size, patch_size=vision.get("patch_size", 16), width=width,
                         layers=vision.get("layers", 12), heads=width // head_width,
                         mlp_ratio=vision.get("mlp_ratio", 4.0)),
        text=TextCfg(context_length=text.get("context_length", 77), vocab_size=text.get("vocab_size", 49_408),
                     width=text.get("width", 512), layers=text.get("layers", 12), heads=text.get("heads", 8),
                     mlp_ratio=text.get("mlp_ratio", 4.0)))


def to_open_clip_config(cfg: ModelCfg) -> dict:
    """Our ModelCfg as an open_clip model config. `head_width` is always written: open_clip derives the vision
    head count from it (default 64), and a wrong count loads without error and gives other features."""
    v, t = cfg.vision, cfg.text
    return {"embed_dim": cfg.embed_dim, "quick_gelu": cfg.quick_gelu,
            "vision_cfg": {"image_size": v.image_size, "layers": v.layers, "width": v.width,
                           "head_width": v.width // v.heads, "mlp_ratio": v.mlp_ratio, "patch_size": v.patch_size},
            "text_cfg": {"context_length": t.context_length, "vocab_size": t.vocab_size, "width": t.width,
                         "heads": t.heads, "layers": t.layers, "mlp_ratio": t.mlp_ratio}}


def expected_shapes(cfg: ModelCfg) -> dict[str, tuple[int, ...]]:
    """Key -> shape of our model's state dict, built on the meta device (no memory, no initialisation)."""
    from train.model import CLIP
    with torch.device("meta"):
        return {k: tuple(v.shape) for k, v in CLIP(cfg).state_dict().items()}


# ---- files -------------------------------------------------------------------------------------------------

def is_torchscript(f) -> bool:
    """A TorchScript archive is a zip with a `constants.pkl` record (torch's own `_is_torchscript_zip` test)."""
    if not zipfile.is_zipfile(f):
        return False
    with zipfile.ZipFile(f) as archive:
        return any(name.split("/", 1)[-1] == "constants.pkl" for name in archive.namelist())


def read_file(path: str) -> object:
    """The file's contents (local or an fsspec URL)."""
    with files.open_file(path) as f:
        return read_contents(f)


def read_contents(f) -> object:
    """An open file's contents: TorchScript archives through `torch.jit.load`, everything else weights-only."""
    torchscript = is_torchscript(f)
    f.seek(0)
    if torchscript:
        # Why this is safe: an archive's pickles (data.pkl, constants.pkl) are read by torch's C++ unpickler,
        # which builds only tensors and TorchScript types, never Python objects or callables, and its code is
        # TorchScript that is compiled, not run, on load. We take the parameters (state_dict()) and never call
        # a method, so none of the archive's code runs. What is trusted is torch's C++ deserializer.
        return torch.jit.load(f, map_location="cpu")
    return torch.load(f, map_location="cpu", weights_only=True)


def unwrap(contents: object, path: str) -> tuple[dict, dict | None, str, int | None]:
    """(state dict, our model config or None, format, step) of a file's contents."""
    if isinstance(contents, torch.jit.ScriptModule):
        return dict(contents.state_dict()), None, "openai", None
    if not isinstance(contents, dict):
        raise WeightsError(f"{path}: holds a {type(contents).__name__}, not a model's weights")
    if "model" in contents and "config" in contents:
        return contents["model"], contents["config"].get("model"), "ours", contents.get("step")
    if "state_dict" in contents:
        return contents["state_dict"], None, "open_clip", None
    if contents and all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in contents.items()):
        return contents, None, "openai" if any(k in contents for k in OPENAI_EXTRA_KEYS) else "state_dict", None
    raise WeightsError(f"{path}: not a model checkpoint (top-level keys {sorted(map(str, contents))[:8]})")


def strip_wrappers(state_dict: dict) -> dict:
    """Drop a prefix that every key has (`module.` from DDP, `_orig_mod.` from torch.compile), repeatedly."""
    for prefix in WRAPPER_PREFIXES * 2:
        if state_dict and all(k.startswith(prefix) for k in state_dict):
            state_dict = {k[len(prefix):]: v for k, v in state_dict.items()}
    return state_dict


def first_difference(state_dict: dict, expected: dict[str, tuple[int, ...]]) -> str | None:
    """The first key (in the model's order, then the file's) that is missing, extra or of another shape."""
    for key, shape in expected.items():
        if key not in state_dict:
            return f"{key} {list(shape)} is missing from the file"
        if tuple(state_dict[key].shape) != shape:
            return f"{key} is {list(state_dict[key].shape)} in the file, {list(shape)} in the model"
    extra = next((k for k in state_dict if k not in expected), None)
    return f"{extra} {list(state_dict[extra].shape)} is in the file but not in the model" if extra else None


def config_difference(a: ModelCfg, b: ModelCfg, prefix: str = "") -> str | None:
    """The first field (dotted) where two model configs differ, as `key a != b`."""
    for f in dataclasses.fields(a):
        x, y = getattr(a, f.name), getattr(b, f.name)
        if dataclasses.is_dataclass(x):
            found = config_difference(x, y, f"{prefix}{f.name}.")
            if found:
                return found
        elif x != y:
            return f"{prefix}{f.name} {x} != {y}"
    return None


def load_weights(path: str | Path, model: str | ModelCfg | None = None) -> Weights:
    """Read any supported file; the architecture is the file's own config, else `model` (a spec or a ModelCfg).
    WeightsError (one line) for a missing or unreadable file, a missing or conflicting architecture, OpenAI
    weights without QuickGELU, or keys/shapes that do not fit."""
    path = str(path)
    if not files.isfile(path):
        raise WeightsError(f"{path}: no such file")
    if path.endswith(".safetensors"):   # open_clip's hub weights also come so; the safetensors package is not ours
        raise WeightsError(f"{path}: .safetensors is not read here; take the .bin/.pt file, or save "
                           "safetensors.torch.load_file(PATH) with torch.save")
    try:
        contents = read_file(path)
    # torch.load raises UnpicklingError on non-weights pickles (weights_only), RuntimeError/EOFError/OSError
    # on other or truncated files; torch.jit.load RuntimeError
    except (pickle.UnpicklingError, RuntimeError, EOFError, OSError, ValueError, zipfile.BadZipFile) as e:
        raise WeightsError(f"{path}: not a readable PyTorch weights file ({type(e).__name__}: "
                           f"{str(e).strip().splitlines()[0][:160] if str(e).strip() else ''})") from None
    state_dict, own_config, fmt, step = unwrap(contents, path)
    state_dict = {k: v for k, v in strip_wrappers(state_dict).items() if k not in OPENAI_EXTRA_KEYS}
    given = model_config(model) if isinstance(model, str) else model
    if own_config is not None:
        cfg = config_lib.from_dict({"model": own_config}).model
        diff = config_difference(cfg, given) if given is not None else None
        if diff:
            raise WeightsError(f"{path} carries its own model config, which differs from the one given ({diff})")
    elif given is None:
        raise WeightsError(f"{path} ({fmt} format) carries no model config: give the architecture with --model "
                           "(e.g. ViT-B-32, or the open_clip config JSON that came with the weights)")
    else:
        cfg = given
    if fmt == "openai" and not cfg.quick_gelu:
        raise WeightsError(f"{path} holds OpenAI's weights, which were trained with QuickGELU: use a -quickgelu "
                           "model (e.g. --model ViT-B-32-quickgelu) or set model.quick_gelu=true")
    diff = first_difference(state_dict, expected_shapes(cfg))
    if diff:
        architecture = f"--model {model}" if isinstance(model, str) and own_config is None else "the model config"
        raise WeightsError(f"{path} does not fit {architecture}: {diff}")
    return Weights(state_dict=state_dict, model=cfg, format=fmt, step=step, path=path)


def load_model(path: str | Path, model: str | ModelCfg | None = None, device="cpu"):
    """(CLIP in eval mode on `device`, the Weights it was loaded from); see `load_weights`."""
    from train.model import CLIP
    weights = load_weights(path, model)
    clip = CLIP(weights.model)
    clip.load_state_dict(weights.state_dict)     # strict: every key checked above, so this cannot half-load
    log.info("loaded %s (%s weights)", path, weights.format)
    return clip.to(device).eval(), weights

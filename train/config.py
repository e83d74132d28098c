"""Trainer configuration: small dataclasses per component, loaded from JSON and overridden by dotted keys.

A run's config is data (`train/configs/*.json`): `model` (the towers' shapes), `data` (batching, shuffling,
workers), `optim` (AdamW and the schedule) and `run` (precision, logging, checkpoints). Each component gets
only its part (`CLIP(cfg.model)`, `lr_at(step, cfg.optim)`), as minGPT does. Overrides use dotted keys,
`optim.lr=1e-3`, from the command line; unknown keys are errors, so a typo cannot silently do nothing.
The resolved config is saved in every checkpoint as plain types.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class VisionCfg:
    image_size: int = 224
    patch_size: int = 32
    width: int = 768
    layers: int = 12
    heads: int = 12
    mlp_ratio: float = 4.0


@dataclass
class TextCfg:
    context_length: int = 77
    vocab_size: int = 49_408
    width: int = 512
    layers: int = 12
    heads: int = 8
    mlp_ratio: float = 4.0


@dataclass
class ModelCfg:
    embed_dim: int = 512
    vision: VisionCfg = field(default_factory=VisionCfg)
    text: TextCfg = field(default_factory=TextCfg)
    quick_gelu: bool = False       # OpenAI's released weights used QuickGELU; open_clip trains with nn.GELU
    init_logit_scale: float = 14.285714285714286   # 1 / 0.07, CLIP section 2.5
    max_logit_scale: float = 100.0                 # CLIP: "clipped to prevent scaling the logits by more than 100"


@dataclass
class DataCfg:
    batch_size: int = 256          # per process (rank); the contrastive batch is batch_size x world size
    workers: int = 4
    resampled: bool = False        # shards drawn with replacement (multi-node) instead of once per epoch
    epoch_samples: int = 0         # resampled mode: samples per epoch over all ranks (0: from *_stats.json)
    shuffle_buffer: int = 2_000    # samples, per worker (open_clip's _SAMPLE_SHUFFLE_SIZE = 5000)
    shuffle_initial: int = 500     # samples buffered before the first one leaves
    crop_scale: tuple[float, float] = (0.9, 1.0)   # open_clip AugmentationCfg.scale default
    resize: str = "auto"           # where crops are resized: "loader", "device" (batched, in to_model_input),
                                   # "auto": the device on CUDA, the loader elsewhere (train/data.py)
    on_error: str = "skip"         # "skip": count and log corrupt samples/shards; "raise": fail (tests)
    merges: str = ""               # CLIP BPE merges file ("" = the one shipped in train/assets/)


@dataclass
class OptimCfg:
    lr: float = 5e-4               # CLIP Table 19, ViT-B/32
    weight_decay: float = 0.2      # CLIP Table 19
    betas: tuple[float, float] = (0.9, 0.98)   # CLIP Table 19 (ViT)
    eps: float = 1e-6              # CLIP Table 19 (ViT)
    warmup: int = 2_000            # CLIP Table 19: warm-up iterations
    steps: int = 10_000
    min_lr: float = 0.0            # cosine decays to this (open_clip: 0)
    grad_clip: float = 1.0         # max global grad norm, 0 = off (the paper says nothing; open_clip: off)


@dataclass
class RunCfg:
    seed: int = 0
    precision: str = "auto"        # "auto" (bf16 on CUDA, fp32 on CPU), "fp32", "bf16", "fp16"
    threads: int = 0               # CPU intra-op threads; 0: one per core not taken by a loader worker
    compile: bool = False          # torch.compile the model (CUDA: ~1.2-1.5x faster steps after warm-up)
    grad_checkpointing: bool = False   # recompute activations in backward: less memory, ~30% more compute
    log_every: int = 50
    ckpt_every: int = 1_000


@dataclass
class TrainConfig:
    model: ModelCfg = field(default_factory=ModelCfg)
    data: DataCfg = field(default_factory=DataCfg)
    optim: OptimCfg = field(default_factory=OptimCfg)
    run: RunCfg = field(default_factory=RunCfg)


def _build(cls, values: dict, where: str):
    known = {f.name: f for f in dataclasses.fields(cls)}
    unknown = set(values) - set(known) - {"notes"}
    if unknown:
        raise ValueError(f"unknown config keys in {where or 'config'}: {sorted(unknown)}")
    kwargs = {}
    for name, value in values.items():
        if name == "notes":
            continue
        default = getattr(cls(), name)
        if dataclasses.is_dataclass(default):
            kwargs[name] = _build(type(default), value, f"{where}.{name}".lstrip("."))
        elif isinstance(default, tuple):
            kwargs[name] = tuple(value)
        else:
            kwargs[name] = value
    return cls(**kwargs)


def from_dict(values: dict) -> TrainConfig:
    """A config from plain types (a JSON file or a checkpoint's `config`); `notes` keys are documentation."""
    return _build(TrainConfig, values, "")


def to_dict(cfg) -> dict:
    """Plain types only (lists, not tuples), so a checkpoint loads with `weights_only=True`."""
    return json.loads(json.dumps(dataclasses.asdict(cfg)))


def load(path: str | Path, overrides: list[str] = ()) -> TrainConfig:
    """Read a JSON config and apply `section.key=value` overrides (values parsed as JSON, else strings)."""
    values = json.loads(Path(path).read_text())
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep:
            raise ValueError(f"override {item!r} is not of the form section.key=value")
        set_dotted(values, key, _parse_value(raw))
    return from_dict(values)


def set_dotted(values: dict, key: str, value) -> None:
    *parents, leaf = key.split(".")
    node = values
    for part in parents:
        node = node.setdefault(part, {})
    node[leaf] = value


def _parse_value(raw: str):
    try:
        return json.loads(raw)
    except json.JSONDecodeError:
        return raw

r"""Contrastive (CLIP) pre-training, streaming from WebDataset shards.

Stage: `train`. In: shards (train/data.py says which URLs), a config (train/configs/*.json).
Out: `runs/NAME/`: `ckpt_latest.pt` (model, optimizer, scaler, step, data position, RNG states, config),
`metrics.jsonl` (one line per log interval), `config.json`, and a log line per interval:
`step 1200 | loss 3.41 | lr 4.8e-4 | temp 14.3 | 1830 samples/s | data 3%`.

Recipe (CLIP, Radford et al. 2021, section 2.5 and Table 19; open_clip's defaults where the paper is
silent): AdamW, no weight decay on gains, biases, embeddings and the temperature; linear warm-up then cosine
decay (`lr_at`); global grad-norm clipping; bf16 autocast and fused AdamW on GPU; the logit scale clamped at 100.
Multi-GPU / multi-node with `torchrun` (DDP; NCCL on GPU, gloo on CPU): the loss sees the features of
every rank (train/loss.py), shards are split by node and by worker (train/data.py).

Checkpoints are written whole (`files.atomic_write`) and hold only tensors and plain types
(`torch.load(weights_only=True)`). `--out` may be an fsspec URL (`s3://...`); metrics.jsonl is rewritten whole
per log interval (object stores cannot append). `--resume` continues from `ckpt_latest.pt` at the same step on
the same batches as an uninterrupted run (tested). `--init WEIGHTS` starts a new run from pretrained weights in
any format train/weights.py reads.

Run:  python -m train.train --shards 'shards/x/{00000..00009}.tar' --config train/configs/tiny.json \
          --out runs/tiny [--init WEIGHTS --steps N --batch-size B --lr LR --warmup W --workers N --resampled --resume
          --stop-at STEP --precision bf16 --compile --grad-checkpointing --set optim.weight_decay=0.1 ...]
      torchrun --nproc_per_node 8 -m train.train --shards ... --config train/configs/vit_b32.json --out runs/b32
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import random
import sys
import time
from collections import Counter
from contextlib import nullcontext
from pathlib import Path

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from pipeline.common.records import DecisionsError, decision_uids
from train import config as config_lib
from train.config import DataCfg, OptimCfg, TrainConfig
from pipeline.common import files
from pipeline.common.files import expand
from pipeline.common.logs import setup_logging
from train.data import make_loader, to_model_input
from train.loss import clip_loss, gather_features
from train.model import CLIP
from train.weights import WeightsError, load_weights

log = logging.getLogger("train")
CKPT = "ckpt_latest.pt"
METRICS = "metrics.jsonl"


# ---- pure pieces -------------------------------------------------------------------------------------------

def lr_at(step: int, cfg: OptimCfg) -> float:
    """Linear warm-up to cfg.lr over cfg.warmup steps, then cosine decay to cfg.min_lr at cfg.steps."""
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    progress = min(1.0, (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup))
    return cfg.min_lr + 0.5 * (cfg.lr - cfg.min_lr) * (1 + math.cos(math.pi * progress))


def no_decay(name: str, param: torch.nn.Parameter) -> bool:
    """Gains, biases, embeddings and the temperature are not decayed (CLIP; open_clip's `exclude`)."""
    return param.ndim < 2 or "embedding" in name or name.endswith("logit_scale")


def make_optimizer(model: torch.nn.Module, cfg: OptimCfg) -> torch.optim.AdamW:
    """AdamW over two groups (decayed, not decayed); on CUDA the fused kernel: one launch per step for all
    parameters instead of a few per tensor (ViT-B/32 has ~300 of them). The same update rule either way."""
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    groups = [{"params": [p for n, p in named if not no_decay(n, p)], "weight_decay": cfg.weight_decay},
              {"params": [p for n, p in named if no_decay(n, p)], "weight_decay": 0.0}]
    fused = all(p.is_cuda for _, p in named) or None   # None: torch's default (foreach) elsewhere
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=tuple(cfg.betas), eps=cfg.eps, fused=fused)


def autocast_for(precision: str, device: torch.device):
    if precision == "fp32":
        return nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16 if precision == "bf16" else torch.float16)


def resolve_precision(precision: str, device: torch.device) -> str:
    if precision not in ("auto", "fp32", "bf16", "fp16"):
        raise ValueError(f"precision must be auto, fp32, bf16 or fp16, not {precision!r}")
    if precision == "auto":
        return "bf16" if device.type == "cuda" else "fp32"   # CPU autocast is slower than fp32 here
    return precision


# ---- one step ----------------------------------------------------------------------------------------------

def train_step(model, raw_model: CLIP, batch: dict, optimizer, scaler, lr: float, cfg: OptimCfg, amp,
               device: torch.device, world_size: int) -> torch.Tensor:
    """Forward, symmetric loss over the global batch, backward, clip, AdamW step. Returns the loss (on device)."""
    images = to_model_input(batch["images"], device, batch.get("boxes"), batch.get("size", 0))
    texts = batch["texts"].to(device, non_blocking=True)
    for group in optimizer.param_groups:
        group["lr"] = lr
    with amp:
        image_features, text_features, logit_scale = model(images, texts)
    # the loss in fp32: logits up to 100 x cosine need more than bf16's 8 bits of mantissa
    all_images, all_texts = gather_features(image_features.float(), text_features.float())
    loss = clip_loss(all_images, all_texts, logit_scale.float())
    optimizer.zero_grad(set_to_none=True)
    # every rank holds the exact gradient of its own features; DDP averages, so scale back to the sum
    scaler.scale(loss * world_size).backward()
    if cfg.grad_clip > 0:
        scaler.unscale_(optimizer)
        torch.nn.utils.clip_grad_norm_(raw_model.parameters(), cfg.grad_clip)
    scaler.step(optimizer)
    scaler.update()
    with torch.no_grad():   # open_clip clamps the parameter itself, so it cannot drift past log(100)
        raw_model.logit_scale.clamp_(0, math.log(raw_model.max_logit_scale))
    return loss.detach()


# ---- data position, checkpoints, distributed ---------------------------------------------------------------

def batch_stream(urls: list[str], cfg: DataCfg, model_cfg, seed: int, start: tuple[int, int], world_size: int,
                 device_type: str, exclude: frozenset[str] = frozenset()):
    """(epoch, batches done in epoch, batch), forever; resumes at `start` = (epoch, batches already done).

    Finite mode with several ranks: an epoch ends for everyone when the first rank runs out (a MIN
    all-reduce per batch), so no rank blocks in a collective while another has left the epoch.
    """
    epoch, skip = start
    check_all_ranks = world_size > 1 and not cfg.resampled
    skipped = Counter()   # corrupt-data counts, handed on with the next batch
    while True:
        done = 0
        for batch in make_loader(urls, cfg, model_cfg.vision.image_size, model_cfg.text.context_length,
                                 seed=seed, epoch=epoch, world_size=world_size, pin_memory=device_type == "cuda",
                                 exclude=exclude, device_type=device_type):
            skipped.update(batch["skipped"])
            if not batch["keys"]:  # only counts (errors after a worker's last batch)
                continue
            # replay to the saved position: same batches, no training; costs the skipped batches' decode time,
            # at most one epoch (in resampled mode keep epochs to hours)
            if done < skip:
                done += 1
                continue
            if check_all_ranks and not all_ranks_agree(True):
                break
            done += 1
            batch["skipped"], skipped = dict(skipped), Counter()
            yield epoch, done, batch
        else:
            if check_all_ranks:
                all_ranks_agree(False)
        if done == 0:
            raise RuntimeError(f"epoch {epoch} produced no batch: are the shards empty or all corrupt?")
        epoch, skip = epoch + 1, 0


def all_ranks_agree(has_batch: bool) -> bool:
    flag = torch.tensor([int(has_batch)], device="cuda" if dist.get_backend() == "nccl" else "cpu")
    dist.all_reduce(flag, op=dist.ReduceOp.MIN)
    return bool(flag.item())


def save_checkpoint(path: str, state: dict) -> None:
    """Written whole or not at all (files.atomic_write: locally a temp file, fsync and rename; on an object store
    one upload committed at the end): a crash never leaves half a checkpoint."""
    with files.atomic_write(str(path)) as f:
        torch.save(state, f)


def load_checkpoint(path: str | Path, map_location="cpu") -> dict:
    with files.open_file(str(path)) as f:
        return torch.load(f, map_location=map_location, weights_only=True)


def write_metrics(path: str, lines: list[str]) -> None:
    """metrics.jsonl, rewritten whole from the run's lines at each log interval: object stores cannot append, and a
    reader (or a resumed run) always sees whole lines. One line per interval (~200 bytes): vit_b32.json's 100,000 steps
    logged every 100 end at ~0.2 MB, one small upload per interval of 100 steps. Per-interval part files would keep
    each write tiny but make every reader list and join them; rewriting at checkpoints only would leave the file
    up to `ckpt_every` steps behind the log."""
    files.write_text(path, "".join(line + "\n" for line in lines))


def metrics_until(path: str, step: int) -> list[str]:
    """The lines of an earlier metrics.jsonl up to `step` (a resumed run logs the later ones again)."""
    if step == 0 or not files.exists(path):
        return []
    with files.open_file(path, "r", encoding="utf-8") as f:
        return [line for line in f.read().splitlines() if line and json.loads(line)["step"] <= step]


def rng_state() -> dict:
    state = {"torch": torch.get_rng_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(tuple(s if not isinstance(s, list) else tuple(s) for s in state["python"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def setup_distributed(device_arg: str) -> tuple[int, int, torch.device]:
    """(rank, world size, device). torchrun sets WORLD_SIZE/RANK/LOCAL_RANK; a plain run is rank 0 of 1."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    use_cuda = device_arg == "cuda" or (device_arg == "auto" and torch.cuda.is_available())
    if world_size == 1:
        return 0, 1, torch.device("cuda" if use_cuda else "cpu")
    local_rank = int(os.environ["LOCAL_RANK"])
    if use_cuda:
        torch.cuda.set_device(local_rank)
    dist.init_process_group("nccl" if use_cuda else "gloo")
    return dist.get_rank(), world_size, torch.device(f"cuda:{local_rank}" if use_cuda else "cpu")


# ---- command line ------------------------------------------------------------------------------------------

FLAG_TO_KEY = {"steps": "optim.steps", "batch_size": "data.batch_size", "lr": "optim.lr", "warmup": "optim.warmup",
               "workers": "data.workers", "epoch_samples": "data.epoch_samples", "precision": "run.precision",
               "seed": "run.seed", "log_every": "run.log_every", "ckpt_every": "run.ckpt_every"}
SWITCH_TO_KEY = {"resampled": "data.resampled", "compile": "run.compile", "grad_checkpointing": "run.grad_checkpointing"}


def parse_args(argv: list[str] | None) -> tuple[argparse.Namespace, TrainConfig]:
    parser = argparse.ArgumentParser(description="CLIP contrastive pre-training from WebDataset shards.")
    parser.add_argument("--shards", required=True, help="brace pattern / list ('::') of local, fsspec or pipe: URLs")
    parser.add_argument("--config", required=True, help="train/configs/*.json")
    parser.add_argument("--out", required=True,
                        help="run directory, local or an fsspec URL (checkpoints, metrics.jsonl)")
    parser.add_argument("--resume", action="store_true", help="continue from OUT/ckpt_latest.pt if it exists")
    parser.add_argument("--init", metavar="WEIGHTS",
                        help="start (step 0) from these weights: ours, open_clip's or OpenAI's (fine-tuning); they "
                             "must fit --config's model (a resumed run ignores this: its checkpoint wins)")
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    parser.add_argument("--exclude", nargs="+", action="extend", default=[], metavar="DECISIONS",
                        help="drop the uids of these dedup decisions (decisions.parquet files or dedup output folders)"
                             " while streaming; counted as skipped 'excluded'")
    parser.add_argument("--stop-at", type=int, default=0,
                        help="checkpoint and exit at this step, schedule unchanged (time-limited jobs; resume later)")
    for flag, key in FLAG_TO_KEY.items():
        kind = str if flag == "precision" else float if flag == "lr" else int
        parser.add_argument("--" + flag.replace("_", "-"), type=kind, help=f"sets {key}")
    for flag, key in SWITCH_TO_KEY.items():
        parser.add_argument("--" + flag.replace("_", "-"), action="store_true", help=f"sets {key}")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="any config value by dotted key, e.g. --set optim.weight_decay=0.1 (repeatable)")
    args = parser.parse_args(argv)
    overrides = [f"{key}={json.dumps(getattr(args, flag))}" for flag, key in FLAG_TO_KEY.items()
                 if getattr(args, flag) is not None]
    overrides += [f"{key}=true" for flag, key in SWITCH_TO_KEY.items() if getattr(args, flag)]
    return args, config_lib.load(args.config, overrides + args.set)


def main(argv: list[str] | None = None) -> dict:
    args, cfg = parse_args(argv)
    rank, world_size, device = setup_distributed(args.device)
    setup_logging(logging.INFO if rank == 0 else logging.WARNING)
    out, urls = args.out, expand(args.shards, ".tar", check_named=False)
    try:
        exclude = decision_uids(args.exclude)
    except DecisionsError as e:
        raise SystemExit(f"train: {e}") from None
    files.makedirs(out)
    precision = configure_device(device, cfg)
    model, raw_model, optimizer, scaler, step, position = build(cfg, out if args.resume else None, rank, world_size,
                                                                device, precision, args.init)
    metrics = metrics_until(files.join(out, METRICS), step) if rank == 0 else []
    if rank == 0:
        files.write_text(files.join(out, "config.json"), json.dumps(config_lib.to_dict(cfg), indent=2) + "\n")
        log.info("%d shards, %.1fM parameters, %s on %s x %d, batch %d x %d", len(urls),
                 sum(p.numel() for p in raw_model.parameters()) / 1e6, precision, device.type, world_size,
                 cfg.data.batch_size, world_size)
        if exclude:
            log.info("excluding %d uids (%s)", len(exclude), ", ".join(args.exclude))

    amp = autocast_for(precision, device)
    stream = batch_stream(urls, cfg.data, cfg.model, cfg.run.seed, position, world_size, device.type,
                          exclude)
    bar = tqdm(total=cfg.optim.steps, initial=step, disable=rank != 0 or not sys.stderr.isatty(), unit="step")
    meter = Meter()
    last = min(cfg.optim.steps, args.stop_at or cfg.optim.steps)
    while step < last:
        t0 = time.perf_counter()
        epoch, done, batch = next(stream)
        t1 = time.perf_counter()
        lr = lr_at(step, cfg.optim)
        loss = train_step(model, raw_model, batch, optimizer, scaler, lr, cfg.optim, amp, device, world_size)
        step += 1
        meter.add(loss, len(batch["keys"]) * world_size, t1 - t0, batch["skipped"])
        bar.update(1)
        if step % cfg.run.log_every == 0 or step == last:
            record = meter.flush(step, epoch, lr, raw_model.scale().item())   # a sync point (.item)
            if rank == 0:
                log.info(format_record(record))
                metrics.append(json.dumps(record))
                write_metrics(files.join(out, METRICS), metrics)
        if rank == 0 and (step % cfg.run.ckpt_every == 0 or step == last):
            save_checkpoint(files.join(out, CKPT), {
                "model": raw_model.state_dict(), "optimizer": optimizer.state_dict(), "scaler": scaler.state_dict(),
                "step": step, "epoch": epoch, "batches_done": done, "rng": rng_state(),
                "config": config_lib.to_dict(cfg), "world_size": world_size})
    bar.close()
    if world_size > 1:
        dist.destroy_process_group()
    return {"step": step, "loss": meter.last_loss}


def configure_device(device: torch.device, cfg: TrainConfig) -> str:
    """Seed, thread count and matmul precision; returns the resolved precision."""
    torch.manual_seed(cfg.run.seed)
    if device.type == "cuda":
        # TF32 for what runs outside bf16 autocast (open_clip does the same)
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    else:
        # leave a core per loader worker: oversubscribed intra-op threads made CPU steps ~10x slower here
        torch.set_num_threads(cfg.run.threads or max(1, (os.cpu_count() or 1) - cfg.data.workers))
    return resolve_precision(cfg.run.precision, device)


def build(cfg: TrainConfig, resume_from: str | None, rank: int, world_size: int, device: torch.device, precision: str,
          init: str | None = None):
    """Model (DDP-wrapped and compiled as asked), optimizer, scaler, and the step and data position to start at."""
    raw_model = CLIP(cfg.model)
    checkpoint = files.join(resume_from, CKPT) if resume_from is not None else None
    if init and not (checkpoint is not None and files.exists(checkpoint)):
        try:
            raw_model.load_state_dict(load_weights(init, cfg.model).state_dict)   # checked to fit: strict, whole
        except WeightsError as e:
            raise SystemExit(f"train: --init {e}") from None
        log.info("initialised from %s", init)
    raw_model = raw_model.to(device)
    raw_model.set_grad_checkpointing(cfg.run.grad_checkpointing)
    optimizer = make_optimizer(raw_model, cfg.optim)
    scaler = torch.amp.GradScaler(device.type, enabled=precision == "fp16")
    step, position = 0, (0, 0)
    if checkpoint is not None and files.exists(checkpoint):
        step, position = restore(checkpoint, cfg, raw_model, optimizer, scaler)
        log.info("resumed from %s at step %d (epoch %d, batch %d)", checkpoint, step, *position)
    elif resume_from is not None:
        log.info("no %s in %s: starting at step 0", CKPT, resume_from)
    model = raw_model
    if world_size > 1:
        model = DistributedDataParallel(raw_model, device_ids=[device.index] if device.type == "cuda" else None)
    if cfg.run.compile:
        model = torch.compile(model)
    return model, raw_model, optimizer, scaler, step, position


def restore(path: str, cfg: TrainConfig, model: CLIP, optimizer, scaler) -> tuple[int, tuple[int, int]]:
    ckpt = load_checkpoint(path)
    if ckpt["config"]["model"] != config_lib.to_dict(cfg)["model"]:
        raise ValueError(f"{path} was trained with another model config; resume with the same --config")
    model.load_state_dict(ckpt["model"])
    optimizer.load_state_dict(ckpt["optimizer"])
    scaler.load_state_dict(ckpt["scaler"])
    set_rng_state(ckpt["rng"])
    return ckpt["step"], (ckpt["epoch"], ckpt["batches_done"])


class Meter:
    """Sums over one log interval; the loss stays on the device until `flush` (no per-step sync)."""

    def __init__(self):
        self.last_loss = float("nan")
        self.skipped: Counter = Counter()
        self._reset()

    def _reset(self):
        self.loss_sum, self.steps, self.samples, self.data_s, self.t0 = 0.0, 0, 0, 0.0, time.perf_counter()

    def add(self, loss: torch.Tensor, samples: int, data_s: float, skipped: dict) -> None:
        self.loss_sum, self.steps = self.loss_sum + loss, self.steps + 1
        self.samples, self.data_s = self.samples + samples, self.data_s + data_s
        self.skipped.update(skipped)

    def flush(self, step: int, epoch: int, lr: float, scale: float) -> dict:
        elapsed = time.perf_counter() - self.t0
        self.last_loss = float(self.loss_sum) / max(1, self.steps)
        record = {"step": step, "epoch": epoch, "loss": round(self.last_loss, 5), "lr": lr, "temp": round(scale, 4),
                  "samples_per_s": round(self.samples / elapsed, 1), "data_share": round(self.data_s / elapsed, 4),
                  "skipped": dict(self.skipped)}
        self._reset()
        return record


def format_record(r: dict) -> str:
    line = (f"step {r['step']} | loss {r['loss']:.3f} | lr {r['lr']:.1e} | temp {r['temp']:.1f} | "
            f"{r['samples_per_s']:.0f} samples/s | data {100 * r['data_share']:.0f}%")
    return line + (f" | skipped {sum(r['skipped'].values())}" if r["skipped"] else "")


if __name__ == "__main__":
    main()

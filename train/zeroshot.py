"""Zero-shot evaluation of a CLIP checkpoint: classification with prompts, and image-text retrieval.

Stage: `train` (`make eval`). In: weights in any format train/weights.py reads (our `ckpt_latest.pt`, open_clip
checkpoints and state dicts, OpenAI's archives; `--model` names the architecture where the file has none);
eval sets as `--eval-set [NAME=]PATH` in any layout `pipeline/common/evalsets.py` reads (ImageFolder, WebDataset
eval shards with `.cls` labels, an MNIST-style CSV), with class names from `--classnames` (a shipped list such
as `cifar10`, a file or a,b,c), a side file, or the folder names (a CSV without names gets the digits "0".."9");
optionally held-out pair shards for retrieval. Images and prompts are prepared exactly as open_clip's eval
transform and tokenizer prepare them (pipeline/common/images.py `eval_image`, train/tokenizer.py), so numbers
compare with published ones. Out: `zeroshot_<NAME>.json` (our report, beside the checkpoint or `--out`), the
same results in CLIP_benchmark's JSON layout in `clip_benchmark/` beside it, and `predictions_<NAME>.jsonl`
beside the checkpoint, one line per image `{"eval_set", "image_id", "label", "pred", "correct"}` (the `overlap`
stage's input).

Classification as in CLIP (Radford et al. 2021, sections 3.1.2 and 3.1.4): each class name is put into prompt
templates, the normalised text embeddings of one class's prompts are averaged and renormalised, and an image is
assigned the most similar class. Reported per template set ("photo": "a photo of a {}."; "ensemble": the 7
templates CLIP's ImageNet notebook selected; the set's own templates when its class-name list has some): top-1,
top-5, mean per-class recall. Predictions and the CLIP_benchmark file use the last set. Retrieval: image->text
and text->image recall@1/5/10 over held-out pairs, each image's own caption being the one correct text.

Run: python -m train.zeroshot --checkpoint runs/x/ckpt_latest.pt --eval-set mnist=data/sample/mnist_5k.csv.gz \
         [--model ViT-B-32] [--classnames cifar10|zero,one,...|FILE] [--templates photo --templates cifar10|FILE]
         [--pairs 'shards/held/{00000..00001}.tar']
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

import numpy as np
import torch

from pipeline.common.evalsets import (EvalSet, classname_candidates, iter_eval_images, layout_of, load_classnames,
                                      open_eval_set, parse_eval_spec, shipped_list)
from pipeline.common.images import DECODE_ERRORS, eval_image
from pipeline.common import files
from pipeline.common.files import expand
from pipeline.common.logs import setup_logging
from train.data import SkipCounter, sample_image_and_caption, tar_to_samples, to_model_input
from train.model import CLIP
from train.tokenizer import DEFAULT_MERGES, ClipTokenizer
from train.weights import WeightsError, load_model

log = logging.getLogger("train.zeroshot")

TEMPLATES = {
    "photo": ["a photo of a {}."],   # CLIP section 3.1.4
    # the 7 of the 80 ImageNet templates chosen by CLIP's "Prompt_Engineering_for_ImageNet" notebook
    "ensemble": ["itap of a {}.", "a bad photo of the {}.", "a origami {}.", "a photo of the large {}.",
                 "a {} in a video game.", "art of the {}.", "a photo of the small {}."],
}


# ---- eval sets ---------------------------------------------------------------------------------------------

def read_eval_set(spec: str, classnames: str | None) -> tuple[EvalSet, list[str], np.ndarray, list[bytes]]:
    """`[NAME=]PATH` -> (the set, image ids, labels, encoded images), through pipeline/common/evalsets.py."""
    name, path = parse_eval_spec(spec) if "=" in spec else (files.name(spec).split(".")[0], spec)
    if classnames is None and layout_of(path) == "csv" and not any(files.isfile(c) for c in classname_candidates(path)):
        classnames = ",".join(str(d) for d in range(10))   # the CSV layout is MNIST's: digits 0-9
    eval_set = open_eval_set(name, path, classnames)
    ids, labels, images = zip(*iter_eval_images(eval_set))
    return eval_set, list(ids), np.array(labels), list(images)


def pair_features(model: CLIP, tokenizer: ClipTokenizer, spec: str, limit: int, size: int, device,
                  batch_size: int = 256) -> tuple[torch.Tensor, torch.Tensor]:
    """Image and text features of up to `limit` held-out pairs, in shard order; broken samples skipped."""
    skips = SkipCounter("skip")
    arrays, captions, image_features = [], [], []
    for sample in tar_to_samples(({"url": u} for u in expand(spec, ".tar", check_named=False)), skips.handler):
        try:
            data, caption = sample_image_and_caption(sample)
            arrays.append(eval_image(data, size))
        except DECODE_ERRORS as exn:
            skips.handler(exn)
            continue
        captions.append(caption)
        if len(arrays) == batch_size or len(captions) == limit:
            image_features.append(encode_arrays(model, arrays, device))
            arrays = []
        if len(captions) == limit:
            break
    if arrays:
        image_features.append(encode_arrays(model, arrays, device))
    if not captions:
        raise ValueError(f"no readable pairs in {spec}")
    return torch.cat(image_features), encode_texts(model, tokenizer, captions, device)


def template_set(value: str) -> tuple[str, list[str]]:
    """A named set ("photo", "ensemble"), a shipped list's templates ("cifar10", "cifar100", "imagenet": OpenAI's
    18, 18 and 80), a file of templates (one per line), or one template such as "a {}."."""
    if value in TEMPLATES:
        return value, TEMPLATES[value]
    if shipped_list(value):
        return value, load_classnames(shipped_list(value))[1]
    if files.isfile(value):
        with files.open_file(value, "r", encoding="utf-8") as f:
            lines = [line.strip() for line in f.read().splitlines() if line.strip()]
        return files.name(value).rsplit(".", 1)[0], lines
    if "{}" not in value:
        raise ValueError(f"template {value!r} is not a set name ({', '.join(TEMPLATES)}), a file, or a text with {{}}")
    return value, [value]


# ---- embeddings and metrics --------------------------------------------------------------------------------

def encode_images(model: CLIP, images: list[bytes], size: int, device, batch_size: int = 256) -> torch.Tensor:
    """Encoded images -> normalised features, decoded one batch at a time (eval preprocessing)."""
    features = []
    for i in range(0, len(images), batch_size):
        arrays = [eval_image(data, size) for data in images[i:i + batch_size]]
        features.append(encode_arrays(model, arrays, device))
    return torch.cat(features)


@torch.no_grad()
def encode_arrays(model: CLIP, arrays: list[np.ndarray], device) -> torch.Tensor:
    """uint8 (s, s, 3) images -> normalised features on the CPU."""
    batch = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2)
    return model.encode_image(to_model_input(batch, device)).float().cpu()


@torch.no_grad()
def encode_texts(model: CLIP, tokenizer: ClipTokenizer, texts: list[str], device, batch_size: int = 512) -> torch.Tensor:
    return torch.cat([model.encode_text(torch.from_numpy(tokenizer(texts[i:i + batch_size])).to(device)).float().cpu()
                      for i in range(0, len(texts), batch_size)])


def class_embeddings(model: CLIP, tokenizer: ClipTokenizer, classnames: list[str], templates: list[str],
                     device) -> torch.Tensor:
    """(classes, d): per class, the renormalised mean of its normalised prompt embeddings (CLIP 3.1.4)."""
    prompts = [t.format(c) for c in classnames for t in templates]
    feats = encode_texts(model, tokenizer, prompts, device).view(len(classnames), len(templates), -1)
    return torch.nn.functional.normalize(feats.mean(dim=1), dim=-1)


def classification_metrics(logits: torch.Tensor, labels: torch.Tensor) -> dict:
    """top-1, top-5 accuracy and mean per-class recall (the mean of each class's top-1 accuracy)."""
    k = min(5, logits.shape[1])
    topk = logits.topk(k, dim=1).indices
    correct1 = topk[:, 0] == labels
    recalls = [correct1[labels == c].float().mean().item() for c in labels.unique()]
    return {"top1": correct1.float().mean().item(), "top5": (topk == labels[:, None]).any(1).float().mean().item(),
            "mean_per_class_recall": float(np.mean(recalls)), "n": len(labels)}


def retrieval_metrics(image_features: torch.Tensor, text_features: torch.Tensor, ks=(1, 5, 10)) -> dict:
    """Recall@k both ways when pair i is (image i, text i): is the true partner among the top k?"""
    sims = image_features @ text_features.T
    truth = torch.arange(len(sims))
    out = {}
    for name, s in (("image_to_text", sims), ("text_to_image", sims.T)):
        # rank of the true partner = how many candidates score strictly higher
        rank = (s > s[truth, truth][:, None]).sum(1)
        out.update({f"{name}_R@{k}": (rank < k).float().mean().item() for k in ks})
    out["n"] = len(sims)
    return out


# ---- entry point -------------------------------------------------------------------------------------------

def evaluate(model: CLIP, tokenizer: ClipTokenizer, spec: str, classnames: str | None,
             template_sets: dict[str, list[str]], device, image_size: int) -> tuple[dict, list[dict]]:
    """(metrics, per-image predictions) of one eval set."""
    eval_set, ids, labels, images = read_eval_set(spec, classnames)
    if eval_set.templates:
        template_sets = {**template_sets, eval_set.name: list(eval_set.templates)}
    image_features = encode_images(model, images, image_size, device)
    labels_t = torch.from_numpy(labels)
    metrics, predictions = {}, None
    for name, templates in template_sets.items():
        logits = image_features @ class_embeddings(model, tokenizer, list(eval_set.classnames), templates, device).T
        metrics[name] = classification_metrics(logits, labels_t)
        predictions = logits.argmax(1).tolist()
    results = {"eval_set": eval_set.name, "path": eval_set.path, "classnames": list(eval_set.classnames),
               "chance": 1 / len(eval_set.classnames), "templates": template_sets, "classification": metrics,
               "predictions_templates": name}
    rows = [{"eval_set": eval_set.name, "image_id": i, "label": int(y), "pred": p, "correct": int(y) == p}
            for i, y, p in zip(ids, labels, predictions)]
    return results, rows


def clip_benchmark_result(dataset: str, model: str, pretrained: str, task: str, metrics: dict, **extra) -> dict:
    """One result in the JSON layout CLIP_benchmark's `eval` writes (clip_benchmark/cli.py), so its `build` step
    and tables that hold published numbers take ours unchanged."""
    return {"dataset": dataset, "model": model, "pretrained": pretrained, "task": task, "metrics": metrics,
            "language": "en", **extra}


def clip_benchmark_classification(metrics: dict, n_classes: int) -> dict:
    """Our classification metrics under CLIP_benchmark's names; acc5 is NaN below 5 classes, as theirs."""
    return {"acc1": metrics["top1"], "acc5": metrics["top5"] if n_classes >= 5 else float("nan"),
            "mean_per_class_recall": metrics["mean_per_class_recall"]}


def clip_benchmark_retrieval(metrics: dict, ks=(1, 5, 10)) -> dict:
    """CLIP_benchmark's names: image retrieval = text -> image, text retrieval = image -> text."""
    out = {}
    for k in ks:
        out[f"image_retrieval_recall@{k}"] = metrics[f"text_to_image_R@{k}"]
        out[f"text_retrieval_recall@{k}"] = metrics[f"image_to_text_R@{k}"]
    return out


def write_clip_benchmark(folder: str, result: dict) -> str:
    """Write under CLIP_benchmark's default file name, {dataset}_{pretrained}_{model}_{language}_{task}.json."""
    files.makedirs(folder)
    name = "_".join(str(result[k]).replace("/", "_") for k in ("dataset", "pretrained", "model", "language", "task"))
    path = files.join(folder, f"{name}.json")
    files.write_text(path, json.dumps(result) + "\n")
    return path


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description="Zero-shot classification and retrieval of a CLIP checkpoint.")
    parser.add_argument("--checkpoint", required=True,
                        help="our ckpt_latest.pt, an open_clip checkpoint or state dict, or OpenAI's .pt archive")
    parser.add_argument("--model", help="architecture where the file carries none: ViT-B-32 (-quickgelu), ViT-B-16, "
                                        "ViT-L-14, an open_clip model config JSON or a train config")
    parser.add_argument("--eval-set", help="[NAME=]PATH: ImageFolder, WebDataset eval shards or MNIST-style CSV")
    parser.add_argument("--classnames", help="a,b,c, a JSON/YAML/TXT file, or a shipped list (cifar10, cifar100, "
                                             "imagenet) (default: side file or folder names)")
    parser.add_argument("--templates", action="append",
                        help="'photo', 'ensemble', a shipped set (cifar10, cifar100, imagenet), a file with one "
                             "template per line, or one template with {} for the class name; repeatable "
                             "(default: photo and ensemble)")
    parser.add_argument("--pairs", help="held-out shards for retrieval (brace pattern)")
    parser.add_argument("--max-pairs", type=int, default=5_000)
    parser.add_argument("--merges", default=str(DEFAULT_MERGES))
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--out", help="results JSON (default: zeroshot_<eval set>.json beside the checkpoint); "
                                      "CLIP_benchmark's JSON files go to clip_benchmark/ beside it")
    args = parser.parse_args(argv)
    setup_logging()
    if not args.eval_set and not args.pairs:
        parser.error("give --eval-set, --pairs, or both")

    try:
        model, weights = load_model(args.checkpoint, args.model, args.device)
    except WeightsError as e:
        parser.exit(2, f"zeroshot: {e}\n")
    cfg = weights.model
    tokenizer = ClipTokenizer(args.merges, cfg.text.context_length)
    template_sets = dict(template_set(t) for t in (args.templates or ["photo", "ensemble"]))
    model_name = Path(args.model).stem if args.model else f"witbuild-{files.folder_name(args.checkpoint)}"
    pretrained = files.name(args.checkpoint)
    results = {"checkpoint": str(args.checkpoint), "format": weights.format, "model": model_name,
               "step": weights.step}
    benchmark = []
    name = "retrieval"
    if args.eval_set:
        evaluation, rows = evaluate(model, tokenizer, args.eval_set, args.classnames, template_sets, args.device,
                                    cfg.vision.image_size)
        results.update(evaluation)
        name = evaluation["eval_set"]
        for templates, m in results["classification"].items():
            log.info("%s | %s | top-1 %.3f | top-5 %.3f | mean per-class recall %.3f | chance %.3f | n %d",
                     name, templates, m["top1"], m["top5"], m["mean_per_class_recall"], results["chance"], m["n"])
        predictions = files.join(files.parent(args.checkpoint), f"predictions_{name}.jsonl")
        files.write_text(predictions, "".join(json.dumps(r) + "\n" for r in rows))
        results["predictions"] = predictions
        used = results["predictions_templates"]
        benchmark.append(clip_benchmark_result(
            name, model_name, pretrained, "zeroshot_classification",
            clip_benchmark_classification(results["classification"][used], len(results["classnames"])),
            templates=template_sets[used]))
    if args.pairs:
        results["retrieval"] = retrieval_metrics(*pair_features(model, tokenizer, args.pairs, args.max_pairs,
                                                                cfg.vision.image_size, args.device))
        log.info("retrieval | %s", " | ".join(f"{k} {v:.3f}" for k, v in results["retrieval"].items() if k != "n"))
        benchmark.append(clip_benchmark_result(pairs_name(args.pairs), model_name, pretrained, "zeroshot_retrieval",
                                               clip_benchmark_retrieval(results["retrieval"])))
    out = args.out or files.join(files.parent(args.checkpoint), f"zeroshot_{name}.json")
    results["clip_benchmark"] = [write_clip_benchmark(files.join(files.parent(out), "clip_benchmark"), r)
                                 for r in benchmark]
    files.write_text(out, json.dumps(results, indent=1) + "\n")
    log.info("wrote %s and %s", out, ", ".join(results["clip_benchmark"]))
    return results


def pairs_name(spec: str) -> str:
    """A retrieval set's name for reports: the folder of its shards (`shards/held/{0..3}.tar` or `shards/held` ->
    held)."""
    head = spec.split("{")[0]
    folder = head if head.endswith("/") or (head == spec and not spec.endswith(".tar")) else files.parent(head)
    return files.name(folder) or "pairs"


if __name__ == "__main__":
    main()

"""Zero-shot evaluation of a trained checkpoint: classification with prompts, and image-text retrieval.

Stage: `train` (`make eval`). In: a checkpoint (`runs/NAME/ckpt_latest.pt`); eval sets as `--eval-set
[NAME=]PATH` in any layout `pipeline/common/evalsets.py` reads (ImageFolder `root/<class>/*.jpg`, WebDataset eval
shards with `.cls` labels, an MNIST-style CSV such as `mnist_5k.csv.gz`), with their class names from
`--classnames`, a side file, or the folder names (a CSV without names gets the digits "0".."9");
optionally held-out pair shards for retrieval. Out, beside the checkpoint: `zeroshot_<NAME>.json` (metrics)
and `predictions_<NAME>.jsonl`, one line per image `{"eval_set", "image_id", "label", "pred", "correct"}`:
the input of the `overlap` stage's Clean / Overlap accuracy test (`--predictions`).

Classification as in CLIP (Radford et al. 2021, section 3.1.2 and 3.1.4): each class name is put into
prompt templates, the normalised text embeddings of one class's prompts are averaged and renormalised,
and an image is assigned the class with the highest cosine similarity. Reported per template set
("photo": the paper's "a photo of a {}."; "ensemble": the 7 templates CLIP's ImageNet notebook selected;
the set's own templates when its class-name file has some): top-1, top-5 and mean per-class recall.
Predictions use the last template set. Retrieval: image->text and text->image recall@1/5/10 over
held-out pairs, where each image's own caption is the one correct text.

Run: python -m train.zeroshot --checkpoint runs/x/ckpt_latest.pt --eval-set mnist=data/sample/mnist_5k.csv.gz \
         [--classnames zero,one,...|FILE] [--templates photo --templates ensemble|FILE|'a {}.'] \
         [--pairs 'shards/held/{00000..00001}.tar']
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

import numpy as np
import torch

from pipeline.common.evalsets import EvalSet, classname_candidates, iter_eval_images, layout_of, open_eval_set, parse_eval_spec
from pipeline.common.images import DECODE_ERRORS, eval_transform, open_rgb
from train import config as config_lib
from train.data import SkipCounter, expand_shards, sample_image_and_caption, tar_to_samples, to_model_input
from train.model import CLIP
from train.tokenizer import DEFAULT_MERGES, ClipTokenizer
from train.train import load_checkpoint

log = logging.getLogger("zeroshot")

TEMPLATES = {
    "photo": ["a photo of a {}."],   # CLIP section 3.1.4
    # the 7 of the 80 ImageNet templates chosen by CLIP's "Prompt_Engineering_for_ImageNet" notebook
    "ensemble": ["itap of a {}.", "a bad photo of the {}.", "a origami {}.", "a photo of the large {}.",
                 "a {} in a video game.", "art of the {}.", "a photo of the small {}."],
}


def load_model(checkpoint: str | Path, device="cpu") -> tuple[CLIP, config_lib.TrainConfig, dict]:
    """(model in eval mode on `device`, its config, the raw checkpoint) from a train/train.py checkpoint.

    Also the image encoder of `dedup`'s embedding signal (pipeline/dedup/embed.py). Raises what torch.load and
    load_state_dict raise on a file that is not such a checkpoint (callers turn that into one clear line).
    """
    ckpt = load_checkpoint(checkpoint)
    cfg = config_lib.from_dict(ckpt["config"])
    model = CLIP(cfg.model).to(device).eval()
    model.load_state_dict(ckpt["model"])
    return model, cfg, ckpt


# ---- eval sets ---------------------------------------------------------------------------------------------

def read_eval_set(spec: str, classnames: str | None) -> tuple[EvalSet, list[str], np.ndarray, list[bytes]]:
    """`[NAME=]PATH` -> (the set, image ids, labels, encoded images), through pipeline/common/evalsets.py."""
    name, path = parse_eval_spec(spec) if "=" in spec else (Path(spec.rstrip("/")).name.split(".")[0], spec)
    if classnames is None and layout_of(path) == "csv" and not any(Path(c).is_file() for c in classname_candidates(path)):
        classnames = ",".join(str(d) for d in range(10))   # the CSV layout is MNIST's: digits 0-9
    eval_set = open_eval_set(name, path, classnames)
    ids, labels, images = zip(*iter_eval_images(eval_set))
    return eval_set, list(ids), np.array(labels), list(images)


def pair_features(model: CLIP, tokenizer: ClipTokenizer, spec: str, limit: int, size: int, device,
                  batch_size: int = 256) -> tuple[torch.Tensor, torch.Tensor]:
    """Image and text features of up to `limit` held-out pairs, in shard order; broken samples skipped."""
    skips = SkipCounter("skip")
    arrays, captions, image_features = [], [], []
    for sample in tar_to_samples(({"url": u} for u in expand_shards(spec)), skips.handler):
        try:
            data, caption = sample_image_and_caption(sample)
            arrays.append(eval_transform(open_rgb(data, size), size))
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
    """A named set ("photo", "ensemble"), a file of templates (one per line), or one template such as "a {}."."""
    if value in TEMPLATES:
        return value, TEMPLATES[value]
    if Path(value).is_file():
        return Path(value).stem, [line.strip() for line in Path(value).read_text().splitlines() if line.strip()]
    if "{}" not in value:
        raise ValueError(f"template {value!r} is not a set name ({', '.join(TEMPLATES)}), a file, or a text with {{}}")
    return value, [value]


# ---- embeddings and metrics --------------------------------------------------------------------------------

def encode_images(model: CLIP, images: list[bytes], size: int, device, batch_size: int = 256) -> torch.Tensor:
    """Encoded images -> normalised features, decoded one batch at a time (eval preprocessing)."""
    features = []
    for i in range(0, len(images), batch_size):
        arrays = [eval_transform(open_rgb(data, size), size) for data in images[i:i + batch_size]]
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


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description="Zero-shot classification and retrieval of a CLIP checkpoint.")
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--eval-set", help="[NAME=]PATH: ImageFolder, WebDataset eval shards or MNIST-style CSV")
    parser.add_argument("--classnames", help="a,b,c or a JSON/YAML/TXT file (default: side file or folder names)")
    parser.add_argument("--templates", action="append",
                        help="'photo', 'ensemble', a file with one template per line, or one template with {} for "
                             "the class name; repeatable (default: photo and ensemble)")
    parser.add_argument("--pairs", help="held-out shards for retrieval (brace pattern)")
    parser.add_argument("--max-pairs", type=int, default=5_000)
    parser.add_argument("--merges", default=str(DEFAULT_MERGES))
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--out", help="results JSON (default: zeroshot_<eval set>.json beside the checkpoint)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s", datefmt="%H:%M:%S")
    if not args.eval_set and not args.pairs:
        parser.error("give --eval-set, --pairs, or both")

    model, cfg, ckpt = load_model(args.checkpoint, args.device)
    tokenizer = ClipTokenizer(args.merges, cfg.model.text.context_length)
    template_sets = dict(template_set(t) for t in (args.templates or ["photo", "ensemble"]))
    results = {"checkpoint": str(args.checkpoint), "step": ckpt["step"]}
    name = "retrieval"
    if args.eval_set:
        evaluation, rows = evaluate(model, tokenizer, args.eval_set, args.classnames, template_sets, args.device,
                                    cfg.model.vision.image_size)
        results.update(evaluation)
        name = evaluation["eval_set"]
        for templates, m in results["classification"].items():
            log.info("%s | %s | top-1 %.3f | top-5 %.3f | mean per-class recall %.3f | chance %.3f | n %d",
                     name, templates, m["top1"], m["top5"], m["mean_per_class_recall"], results["chance"], m["n"])
        predictions = Path(args.checkpoint).parent / f"predictions_{name}.jsonl"
        predictions.write_text("".join(json.dumps(r) + "\n" for r in rows))
        results["predictions"] = str(predictions)
    if args.pairs:
        results["retrieval"] = retrieval_metrics(*pair_features(model, tokenizer, args.pairs, args.max_pairs,
                                                                cfg.model.vision.image_size, args.device))
        log.info("retrieval | %s", " | ".join(f"{k} {v:.3f}" for k, v in results["retrieval"].items() if k != "n"))
    out = Path(args.out) if args.out else Path(args.checkpoint).parent / f"zeroshot_{name}.json"
    out.write_text(json.dumps(results, indent=1) + "\n")
    log.info("wrote %s", out)
    return results


if __name__ == "__main__":
    main()

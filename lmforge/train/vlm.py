"""Vision-language training, LLaVA-style, on generated shape pictures (`lmforge.data.shapes`).

The run, top to bottom (each part skipped when its folder already holds a finished model, so a
stopped run continues at the next unfinished stage):
  encoder   the small ViT pretrained on the training pictures alone: one linear head per attribute
            (colour, shape, count, position, size) over its mean patch feature. (A stand-in for the
            CLIP/SigLIP tower LLaVA starts from; the held-out colour-shape pairs are never shown.)
            With `vision_tower` (a local CLIP/SigLIP folder) that tower is the encoder instead,
            frozen as it is, and this part is skipped.
  stage 1   the projector alone learns to caption (encoder and language model frozen).
  stage 2   projector + LoRA on the language model learn to answer questions about pictures.
  baseline  the same LoRA recipe on the same captions and questions with the pictures removed: a
            text-only model that never sees an image, whose accuracy shows what guessing gets.
After stage 1, stage 2 and the baseline, `lmforge.eval.vision` measures captioning and question
answering on the test split (training combinations) and the held-out split (unseen colour-shape
pairs). Everything lands in OUT: encoder/, stage1/, stage2/, baseline/ (model folders),
metrics.jsonl, loss.png and report.json.

Shared helpers: `schedule.lr_multiplier`, `step.clip_gradients`/`ensure_finite`, `metrics.MetricsLog`
and `plot_metrics`, `model.lora.apply_lora`, `io.vision.save_vision_model`.
"""

from __future__ import annotations

import dataclasses
import json
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from lmforge.core.files import write_text_atomically
from lmforge.data.images import image_to_tensor, load_image
from lmforge.data.shapes import COLOURS, COUNTS, POSITIONS, SHAPES, SIZES
from lmforge.io.registry import load_model
from lmforge.io.vision import is_vision_folder, load_vision_model, save_vision_model
from lmforge.io.vision_tower import load_tower_encoder
from lmforge.model.lora import apply_lora
from lmforge.model.transformer import Transformer
from lmforge.model.vision import Projector, VisionConfig, VisionEncoder, VisionLanguageModel
from lmforge.tokenizer.image_chat import choose_image_token, render_image_conversation
from lmforge.tokenizer.tokenizer import Tokenizer
from lmforge.train.config import ScheduleConfig
from lmforge.train.distributed import DistInfo
from lmforge.train.losses import IGNORE_INDEX
from lmforge.train.metrics import MetricsLog, plot_metrics
from lmforge.train.schedule import lr_multiplier
from lmforge.train.step import clip_gradients, ensure_finite

__all__ = ["StageConfig", "VLMRecipe", "read_records", "train_vlm", "truncate_layers"]


@dataclass(frozen=True)
class StageConfig:
    steps: int = 200
    lr: float = 1e-3
    batch_size: int = 16


@dataclass(frozen=True)
class VLMRecipe:
    data: str  # a folder written by `lmforge vlm data` (write_shapes_dataset)
    out: str
    lm: str = "smollm2-135m-instruct"
    lm_layers: int = 0  # keep only the first N decoder layers of the language model (0: all)
    vision: VisionConfig = VisionConfig()
    vision_tower: str = ""  # a local CLIP/SigLIP folder used as the (frozen) encoder instead of the small ViT
    vision_feature_layer: int = -1  # with vision_tower: -1 its last_hidden_state, else its hidden_states[N]
    encoder: StageConfig = StageConfig(steps=300, lr=2e-3, batch_size=64)
    stage1: StageConfig = StageConfig(steps=200, lr=2e-3)
    stage2: StageConfig = StageConfig(steps=200, lr=1e-3)
    baseline: bool = True  # train and evaluate the text-only baseline
    lora_rank: int = 8
    lora_alpha: float = 16.0
    warmup_steps: int = 20
    grad_clip: float = 1.0
    eval_items: int = 100  # pictures per evaluated split (each gives a caption and four questions)
    max_new_tokens: int = 16
    seed: int = 0

    def __post_init__(self) -> None:
        if self.lm_layers < 0:
            raise ValueError(f"lm_layers must be 0 (all) or positive, got {self.lm_layers}")
        for name in ("encoder", "stage1", "stage2"):
            stage = getattr(self, name)
            if stage.steps < 0 or stage.lr <= 0 or stage.batch_size <= 0:
                raise ValueError(f"{name}: steps must be >= 0, lr and batch_size positive")
        if self.eval_items < 0 or self.lora_rank <= 0:
            raise ValueError("eval_items must be >= 0 and lora_rank positive")


# ------------------------------------------------------------------------------------- data
def read_records(data: Path, split: str, kind: str) -> list[dict[str, Any]]:
    """The records of DATA/{split}-{kind}.jsonl (kind: captions or qa)."""
    from lmforge.data.readers import jsonl_objects

    path = data / f"{split}-{kind}.jsonl"
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist; write the data with `lmforge vlm data`")
    return [record for _, record in jsonl_objects(path, "a JSON object with 'messages'")]


class ImageBank:
    """Every picture a run uses, decoded and resized once: url -> index into one tensor."""

    def __init__(self, data: Path, size: int) -> None:
        self.data, self.size = data, size
        self.index: dict[str, int] = {}
        self.tensors: list[torch.Tensor] = []

    def add(self, url: str) -> int:
        if url not in self.index:
            self.index[url] = len(self.tensors)
            self.tensors.append(image_to_tensor(load_image(url, base_dir=self.data), self.size))
        return self.index[url]

    def stack(self, indices: Sequence[int]) -> torch.Tensor:
        return torch.stack([self.tensors[i] for i in indices]) if indices else torch.empty(0, 3, self.size, self.size)


def without_images(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The messages with every image part dropped (the text-only baseline's view)."""
    out = []
    for message in messages:
        content = message["content"]
        if isinstance(content, list):
            content = "".join(p.get("text", "") for p in content if p.get("type") != "image_url").strip()
        out.append({**message, "content": content})
    return out


@dataclass
class Example:
    ids: list[int]
    mask: list[int]
    image_mask: list[bool]
    images: list[int]


def encode_examples(records: list[dict], tokenizer: Tokenizer, bank: ImageBank, image_token: str,
                    tokens_per_image: int, with_images: bool) -> list[Example]:
    out = []
    for record in records:
        messages = record["messages"] if with_images else without_images(record["messages"])
        ids, mask, image_mask, urls = render_image_conversation(tokenizer, messages, image_token=image_token,
                                                                tokens_per_image=tokens_per_image)
        out.append(Example(ids, mask, image_mask, [bank.add(u) for u in urls]))
    return out


def collate(examples: Sequence[Example], bank: ImageBank, pad_id: int) -> tuple[torch.Tensor, ...]:
    """(inputs [B, T], targets [B, T], image mask [B, T], images [N, 3, S, S]); right padding."""
    width = max(len(e.ids) for e in examples) - 1
    inputs = torch.full((len(examples), width), pad_id, dtype=torch.long)
    targets = torch.full((len(examples), width), IGNORE_INDEX, dtype=torch.long)
    image_mask = torch.zeros((len(examples), width), dtype=torch.bool)
    for row, e in enumerate(examples):
        n = len(e.ids) - 1
        ids = torch.tensor(e.ids)
        inputs[row, :n] = ids[:-1]
        targets[row, :n] = torch.where(torch.tensor(e.mask[1:], dtype=torch.bool), ids[1:], IGNORE_INDEX)
        image_mask[row, :n] = torch.tensor(e.image_mask[:-1])
    return inputs, targets, image_mask, bank.stack([i for e in examples for i in e.images])


# ------------------------------------------------------------------------------------- models
def truncate_layers(lm: Transformer, keep: int) -> Transformer:
    """The language model with only its first `keep` decoder layers (its norm and head kept)."""
    if keep <= 0 or keep >= lm.config.n_layers:
        return lm
    drop = tuple(f"{prefix}.{i}." for prefix in ("model.layers", "transformer.h") for i in range(keep, lm.config.n_layers))
    state = {k: v for k, v in lm.state_dict().items() if not k.startswith(drop)}
    return Transformer.from_state_dict(dataclasses.replace(lm.config, n_layers=keep), state)


class AttributeHeads(nn.Module):
    """Encoder pretraining: one linear classifier per attribute over the mean patch feature."""

    CLASSES = {"colour": tuple(COLOURS), "shape": SHAPES, "count": COUNTS, "position": POSITIONS, "size": SIZES}

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.heads = nn.ModuleDict({name: nn.Linear(dim, len(values)) for name, values in self.CLASSES.items()})

    def labels(self, scene: dict[str, Any]) -> list[int]:
        values = {**scene, "count": COUNTS[scene["count"] - 1]}
        return [self.CLASSES[name].index(values[name]) for name in self.heads]

    def loss(self, features: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, float]:
        pooled = features.mean(dim=1)
        losses, right = [], 0.0
        for column, head in enumerate(self.heads.values()):
            logits = head(pooled)
            losses.append(F.cross_entropy(logits, labels[:, column]))
            right += float((logits.argmax(-1) == labels[:, column]).float().mean())
        return torch.stack(losses).sum(), right / len(self.heads)


# ------------------------------------------------------------------------------------- the loop
def optimize(name: str, params: list[nn.Parameter], stage: StageConfig, recipe: VLMRecipe,
             loss_of_step: Callable[[int], tuple[torch.Tensor, dict[str, float]]], module: nn.Module,
             metrics: MetricsLog, say: Callable[[str], None]) -> None:
    """`stage.steps` AdamW steps on `params` of the loss `loss_of_step(step)` returns, with warmup
    and cosine decay, gradient clipping, the finite-loss check and a metrics record every 10 steps."""
    optimizer = torch.optim.AdamW(params, lr=stage.lr, weight_decay=0.0)
    schedule = ScheduleConfig(name="cosine", warmup_steps=recipe.warmup_steps, min_lr_frac=0.1)
    single = DistInfo(rank=0, world=1, local_rank=0, device=torch.device("cpu"))
    started = time.perf_counter()
    module.train()
    for step in range(stage.steps):
        for group in optimizer.param_groups:
            group["lr"] = stage.lr * lr_multiplier(schedule, step, step / max(stage.steps, 1))
        loss, extra = loss_of_step(step)
        value = float(loss.detach())
        ensure_finite(value, step, single)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        norm = clip_gradients(module, recipe.grad_clip)
        optimizer.step()
        if step % 10 == 0 or step == stage.steps - 1:
            seconds = time.perf_counter() - started
            metrics.log(stage=name, step=step + 1, tokens=step + 1, time_s=round(seconds, 3), train_loss=round(value, 4),
                        grad_norm=round(norm, 3), lr=optimizer.param_groups[0]["lr"], **extra)
            say(f"{name} step {step + 1}/{stage.steps} loss {value:.4f} ({seconds:.0f}s)")
    module.eval()


def lm_loss(vlm: VisionLanguageModel, batch: tuple[torch.Tensor, ...]) -> torch.Tensor:
    """Mean next-token cross-entropy over the target tokens; logits only where there is a target."""
    inputs, targets, image_mask, images = batch
    hidden = vlm(inputs, image_mask if images.shape[0] else None, images, head=False)
    chosen = targets != IGNORE_INDEX
    return F.cross_entropy(vlm.lm.head_logits(hidden[chosen]).float(), targets[chosen])


def sampler(examples: list[Example], batch_size: int, bank: ImageBank, pad_id: int,
            seed: int) -> Callable[[int], tuple[torch.Tensor, ...]]:
    rng = random.Random(seed)
    return lambda step: collate(rng.sample(examples, min(batch_size, len(examples))), bank, pad_id)


def train_vlm(recipe: VLMRecipe, evaluate: Callable[..., dict[str, Any]] | None,
              say: Callable[[str], None] = print) -> dict[str, Any]:
    """Run the recipe (see the module docstring); returns the report also written to OUT/report.json.
    `evaluate(vlm, tokenizer, data, with_images=, limit=, max_new_tokens=)` measures a model after
    each stage (the CLI passes `lmforge.eval.vision.evaluate_shapes`; eval sits above train); None
    skips measuring."""
    data, out = Path(recipe.data), Path(recipe.out)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(recipe.seed)
    # a continued run keeps the records of the stages it does not repeat
    metrics = MetricsLog(out / "metrics.jsonl", resume_step=1 << 40 if (out / "metrics.jsonl").exists() else None)
    report: dict[str, Any] = {"recipe": json.loads(json.dumps(dataclasses.asdict(recipe))), "stages": {}}

    started = time.perf_counter()
    lm, tokenizer = load_model(recipe.lm)
    lm = truncate_layers(lm, recipe.lm_layers)
    say(f"language model {recipe.lm}: {lm.config.n_layers} layers, width {lm.config.dim} "
        f"(loaded in {time.perf_counter() - started:.0f}s)")
    image_token, image_id = choose_image_token(tokenizer, recipe.vision.image_token or None)
    if recipe.vision_tower:
        encoder = load_tower_encoder(recipe.vision_tower, pool=recipe.vision.pool, lm_dim=lm.config.dim,
                                     image_token=image_token, feature_layer=recipe.vision_feature_layer)
        vision = encoder.config
        say(f"vision tower {recipe.vision_tower}: {encoder.tower.config.kind}, {vision.n_layers} layers, width "
            f"{vision.dim}, {vision.image_size}px pictures, {vision.tokens_per_image} image tokens")
    else:
        vision = dataclasses.replace(recipe.vision, lm_dim=lm.config.dim, image_token=image_token)
        encoder = VisionEncoder(vision)
    bank = ImageBank(data, vision.image_size)
    pad_id = tokenizer.pad_id if tokenizer.pad_id is not None else 0
    captions, questions = read_records(data, "train", "captions"), read_records(data, "train", "qa")

    def measure(name: str, vlm: VisionLanguageModel, with_images: bool) -> None:
        if recipe.eval_items and evaluate is not None:
            started = time.perf_counter()
            report["stages"][name] = evaluate(vlm, tokenizer, data, with_images=with_images, limit=recipe.eval_items,
                                              max_new_tokens=recipe.max_new_tokens)
            say(f"{name}: {json.dumps(report['stages'][name]['summary'])} ({time.perf_counter() - started:.0f}s)")
            write_text_atomically(out / "report.json", json.dumps(report, indent=1) + "\n")

    # encoder pretraining
    if recipe.vision_tower:
        say("encoder: the vision tower, frozen (no pretraining)")
    elif (out / "encoder" / "encoder.safetensors").is_file():
        from safetensors.torch import load_file

        encoder.load_state_dict(load_file(str(out / "encoder" / "encoder.safetensors")))
        say("encoder: resumed from encoder/")
    else:
        heads = AttributeHeads(vision.dim)
        urls = [r["messages"][0]["content"][0]["image_url"]["url"] for r in captions]
        indices = [bank.add(u) for u in urls]
        labels = torch.tensor([heads.labels(r["scene"]) for r in captions])
        rng = random.Random(recipe.seed)

        def encoder_loss(step: int) -> tuple[torch.Tensor, dict[str, float]]:
            pick = rng.sample(range(len(indices)), min(recipe.encoder.batch_size, len(indices)))
            loss, accuracy = heads.loss(encoder(bank.stack([indices[i] for i in pick])), labels[pick])
            return loss, {"attribute_accuracy": round(accuracy, 3)}

        whole = nn.ModuleList([encoder, heads])
        optimize("encoder", list(whole.parameters()), recipe.encoder, recipe, encoder_loss, whole, metrics, say)
        from safetensors.torch import save_file

        (out / "encoder").mkdir(exist_ok=True)
        save_file({k: v.contiguous() for k, v in encoder.state_dict().items()}, str(out / "encoder" / "encoder.safetensors"))
    encoder.requires_grad_(False).eval()

    # stage 1: the projector alone, on captions
    if is_vision_folder(out / "stage1"):
        vlm, _ = load_vision_model(out / "stage1")
        say("stage 1: resumed from stage1/")
    else:
        for p in lm.parameters():
            p.requires_grad_(False)
        vlm = VisionLanguageModel(lm, encoder, Projector(vision), image_id)
        train = encode_examples(captions, tokenizer, bank, image_token, vision.tokens_per_image, True)
        draw = sampler(train, recipe.stage1.batch_size, bank, pad_id, recipe.seed + 1)
        optimize("stage1", list(vlm.projector.parameters()), recipe.stage1, recipe,
                 lambda step: (lm_loss(vlm, draw(step)), {}), vlm, metrics, say)
        save_vision_model(out / "stage1", vlm, tokenizer, {"stage": 1})
    measure("stage1", vlm, True)

    # stage 2: projector + LoRA, on questions
    def lora_stage(name: str, vlm: VisionLanguageModel, with_images: bool, records: list[dict]) -> VisionLanguageModel:
        apply_lora(vlm.lm, "all-linear", rank=recipe.lora_rank, alpha=recipe.lora_alpha)
        train = encode_examples(records, tokenizer, bank, image_token, vision.tokens_per_image, with_images)
        draw = sampler(train, recipe.stage2.batch_size, bank, pad_id, recipe.seed + 2)
        params = [p for p in vlm.lm.parameters() if p.requires_grad]
        if with_images:
            params += list(vlm.projector.parameters())
        optimize(name, params, recipe.stage2, recipe, lambda step: (lm_loss(vlm, draw(step)), {}), vlm, metrics, say)
        save_vision_model(out / name, vlm, tokenizer, {"stage": name})
        return vlm

    if is_vision_folder(out / "stage2"):
        vlm, _ = load_vision_model(out / "stage2")
        say("stage 2: resumed from stage2/")
    else:
        vlm.projector.requires_grad_(True)
        vlm = lora_stage("stage2", vlm, True, questions)
    measure("stage2", vlm, True)

    if recipe.baseline:
        if is_vision_folder(out / "baseline"):
            text_only, _ = load_vision_model(out / "baseline")
        else:
            base, _ = load_model(recipe.lm)
            base = truncate_layers(base, recipe.lm_layers)
            text_only = VisionLanguageModel(base, encoder, Projector(vision), image_id)
            text_only = lora_stage("baseline", text_only, False, captions + questions)
        measure("baseline", text_only, False)

    records = metrics.records()
    if records:
        plot_metrics([{**r, "tokens": i} for i, r in enumerate(records)], out / "loss.png", title="vlm training loss")
    report["train_seconds"] = round(time.perf_counter() - started, 1)
    write_text_atomically(out / "report.json", json.dumps(report, indent=1) + "\n")
    return report

"""The RunInference model handler that scores image-caption pairs with a trainer checkpoint.

Imported only by a job that scores (pipeline/scoring/pairs.py imports it lazily): Beam's inference
module imports torch, and the handler imports the trainer's model code when it loads a model.

    handler = ClipModelHandler(ScoreConfig("runs/tiny"), identify_checkpoint("runs/tiny"))
    rows | RunInference(handler)   # PredictionResult(row, (score, image emb, text emb) | None)
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np
import torch
from apache_beam.ml.inference.base import ModelHandler, PredictionResult

from pipeline.scoring.identity import ScorerIdentity, checkpoint_sha256, local_checkpoint
from pipeline.scoring.pairs import ScoreConfig
from schemas.imagehash import DECODE_ERRORS


def _device(preference: str) -> torch.device:
    if preference == "cuda" or (preference == "auto" and torch.cuda.is_available()):
        return torch.device("cuda")
    return torch.device("cpu")


def load_scoring_model(path: str, device: str = "auto", model: str | None = None):
    """(CLIP model in eval mode, tokenizer) from a local checkpoint file or .dcp folder; with
    `model` (an OpenCLIP architecture or config .json), from OpenCLIP / OpenAI weights."""
    if model is not None:
        from trainer.pretrained import load_openclip

        return load_openclip(model, path, _device(device))
    from trainer.checkpoint import load_model

    return load_model(path, _device(device))


class ClipScorer:
    """A loaded model: uint8 pixels and captions in, score and float16 embeddings out."""

    def __init__(self, scorer: ScorerIdentity, cfg: ScoreConfig):
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        with local_checkpoint(scorer.checkpoint) as local:  # a copy of a gs:// / s3:// file
            if checkpoint_sha256(local) != scorer.sha256:
                raise RuntimeError(
                    f"checkpoint {scorer.checkpoint} changed since the job started "
                    f"(sha256 is no longer {scorer.sha256[:12]}...)"
                )
            model = scorer.model if scorer.family == "open_clip" else None
            self.model, self.tokenizer = load_scoring_model(local, cfg.device, model)
        self.device = next(self.model.parameters()).device

    @torch.inference_mode()
    def score(
        self, pixels: torch.Tensor, captions: list[str]
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """uint8 (B, 3, S, S), B captions -> scores (B,) float32, embeddings (B, D) float16."""
        from trainer.transforms import normalize

        images = self.model.encode_image(normalize(pixels.to(self.device)))  # (B, D), normalized
        texts = self.model.encode_text(self.tokenizer(captions).to(self.device))  # (B, D)
        scores = (images.float() * texts.float()).sum(dim=-1)  # (B,) cosine similarity
        return (
            scores.cpu().numpy().astype(np.float32),
            images.cpu().numpy().astype(np.float16),
            texts.cpu().numpy().astype(np.float16),
        )


class ClipModelHandler(ModelHandler[dict, PredictionResult, ClipScorer]):
    """Rows with `_image` and `caption` -> PredictionResult(row, (score, image embedding, text
    embedding)), or (row, None) for an image the model cannot decode. Images get the trainer's
    evaluation view (decode, shorter side to the model's size, center crop), as in
    `webpairs eval`, so a score here equals a plain forward pass of the same model."""

    def __init__(self, cfg: ScoreConfig, scorer: ScorerIdentity):
        super().__init__(large_model=cfg.large_model)
        self.cfg, self.scorer = cfg, scorer

    def load_model(self) -> ClipScorer:
        return ClipScorer(self.scorer, self.cfg)

    def run_inference(
        self, batch: Sequence[dict], model: ClipScorer, inference_args: dict | None = None
    ) -> Iterable[PredictionResult]:
        from trainer.transforms import decode_image, resize_center_crop

        size = self.scorer.image_size
        pixels, readable = [], []
        for i, row in enumerate(batch):
            try:
                pixels.append(resize_center_crop(decode_image(row["_image"], size), size))
            except DECODE_ERRORS:
                continue  # counted as score/undecodable when the result is attached
            readable.append(i)
        results = [PredictionResult(row, None) for row in batch]
        if pixels:
            captions = [batch[i].get("caption") or "" for i in readable]
            scores, images, texts = model.score(torch.stack(pixels), captions)
            for j, i in enumerate(readable):
                results[i] = PredictionResult(batch[i], (float(scores[j]), images[j], texts[j]))
        return results

    def batch_elements_kwargs(self) -> dict:
        # A fixed batch size: the last batch of a bundle may be smaller.
        return {"min_batch_size": self.cfg.batch_size, "max_batch_size": self.cfg.batch_size}

    def get_num_bytes(self, batch: Sequence[dict]) -> int:
        # The default pickles the whole batch to measure it: costly with image bytes inside.
        return sum(len(row["_image"]) for row in batch)

    def get_metrics_namespace(self) -> str:
        return "score"

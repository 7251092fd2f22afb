"""A quality classifier for data preparation, as FineWeb-Edu builds one: a judge labels a sample of the crawl, a
small fast classifier (fastText) learns those labels, and datatrove's FastTextClassifierFilter scores every page
with it, keeping the score in the page's metadata (`__label__<label>`) so a mixture can threshold or weight by it.

The judge is a function named by import path (`module:function`), given the sampled documents (dicts with `id` and
`text`, and the source's other fields) and `judge_kwargs`, returning one label per document. The tiny world's judge
knows which pages it planted (`llm_recipes.tiny_world.content_farm:page_quality`); on a real crawl it is a function
that prompts a model, as FineWeb-Edu's Llama-3-70B annotations were.

The classifier is measured on labelled pages it was not trained on (`heldout_fraction`): precision and recall on the
pages it drops, and the share of pages the judge calls good that it drops anyway.
"""

import json
import logging
import random
import subprocess
import sys
from itertools import islice
from pathlib import Path

from datatrove.pipeline.filters import FastTextClassifierFilter

from llm_recipes.atomic_files import write_json_atomic
from llm_recipes.recipe import RecipeError
from llm_recipes.rewards import imported_function

logger = logging.getLogger("llm_recipes")

MODEL_FILE = "model.bin"
METRICS_FILE = "metrics.json"


def read_documents(sources, per_source: int) -> list[dict]:
    """Up to `per_source` documents of each source, in order, as dicts (id, text and the source's metadata)."""
    documents = []
    for source in sources:
        for doc in islice(source.reader().run(), per_source):
            documents.append({"id": doc.id, "text": doc.text, **doc.metadata})
    return documents


# Run as `python -c TRAIN_FASTTEXT <train file> <model file> <train_supervised's arguments as JSON>`.
TRAIN_FASTTEXT = """
import json, sys
import fasttext
fasttext.train_supervised(input=sys.argv[1], **json.loads(sys.argv[3])).save_model(sys.argv[2])
"""


def fasttext_line(label: str, text: str) -> str:
    return f"__label__{label} " + " ".join(text.split())


def train_quality_classifier(settings, sources, folder: Path, seed: int) -> dict:
    """Label a seeded sample with the judge, train fastText on part of it, measure it on the rest, and save the
    model and its metrics in `folder`; a folder that holds both already (a resumed run) is reused."""
    from fasttext.FastText import _FastText

    if (folder / MODEL_FILE).is_file() and (folder / METRICS_FILE).is_file():
        return json.loads((folder / METRICS_FILE).read_text())
    judge = imported_function(settings.judge, key="quality_classifier.judge")
    documents = read_documents(sources, settings.read_per_source)
    random.Random(seed).shuffle(documents)
    documents = documents[:settings.annotate]
    labels = judge(documents, **settings.judge_kwargs)
    if len(labels) != len(documents):
        raise RecipeError(f"quality_classifier.judge: {settings.judge} gave {len(labels)} labels for "
                          f"{len(documents)} documents; it must label each one.")
    if settings.keep_label not in labels or len(set(labels)) < 2:
        raise RecipeError(f"quality_classifier: the judge labelled the {len(documents)} sampled documents "
                          f"{sorted(set(labels))}; a classifier needs '{settings.keep_label}' and another label.")
    held_out = round(len(documents) * settings.heldout_fraction)
    folder.mkdir(parents=True, exist_ok=True)
    train_file = folder / "train.txt"
    train_file.write_text("".join(fasttext_line(label, doc["text"]) + "\n"
                                  for doc, label in zip(documents[held_out:], labels[held_out:])))
    # fastText trains in a process of its own. In one that has imported torch (a test worker, a notebook) its
    # training often stops with "Encountered NaN" (measured: 10 of 16 settings on a 1,000-line file), and never did
    # in a fresh process.
    train_args = dict(epoch=settings.epoch, lr=settings.lr, wordNgrams=settings.word_ngrams, dim=settings.dim,
                      bucket=settings.bucket, thread=1, seed=seed, verbose=0)
    written = folder / f".{MODEL_FILE}.tmp"
    subprocess.run([sys.executable, "-c", TRAIN_FASTTEXT, str(train_file), str(written), json.dumps(train_args)],
                   check=True)
    train_file.unlink()
    model = _FastText(str(written))
    metrics = held_out_metrics(model, documents[:held_out], labels[:held_out], settings)
    metrics.update(annotated=len(documents), trained_on=len(documents) - held_out,
                   label_counts={label: labels.count(label) for label in sorted(set(labels))})
    written.replace(folder / MODEL_FILE)
    write_json_atomic(folder / METRICS_FILE, metrics)
    logger.info("Quality classifier on %s held-out labelled pages: %s", held_out, json.dumps(metrics))
    return metrics


class TrainedClassifierFilter(FastTextClassifierFilter):
    """datatrove's FastTextClassifierFilter, reading the model trained here from where it was written.

    datatrove copies a model into its asset cache (~/.cache/huggingface/assets/datatrove/) under a name made from
    its path, the first time, and reads that copy from then on: a classifier trained again at the same path (the
    same recipe run again on other data or settings) would score the pages with the first run's model."""

    @property
    def model(self):
        if self._model is None:
            from fasttext.FastText import _FastText

            # The keep label is among the model's: the judge's labels were checked before training.
            self._model = _FastText(self.model_url)
        return self._model


def keep_score(model, text: str, label: str) -> float:
    labels, scores = model.predict(" ".join(text.split()), k=-1)
    return float(dict(zip(labels, scores)).get(f"__label__{label}", 0.0))


def held_out_metrics(model, documents: list[dict], labels: list[str], settings) -> dict:
    """How the classifier, at the filter's threshold, does on labelled pages it never saw."""
    dropped = [keep_score(model, doc["text"], settings.keep_label) < settings.min_score for doc in documents]
    bad = [label != settings.keep_label for label in labels]
    true_drops = sum(d and b for d, b in zip(dropped, bad))
    return {"held_out_pages": len(documents), "held_out_bad_pages": sum(bad),
            "precision": true_drops / max(sum(dropped), 1), "recall": true_drops / max(sum(bad), 1),
            "good_pages_dropped": sum(d and not b for d, b in zip(dropped, bad)) / max(len(bad) - sum(bad), 1)}

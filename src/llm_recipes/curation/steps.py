"""The few pipeline steps datatrove lacks: a per-source sampler (mixing by weight), PII redaction that counts what
it changed (and one for phone numbers), and decontamination against local eval files. Each is a datatrove step,
so its stats land in datatrove's `stats/` like any other's.
"""

import re

from datatrove.data import Document
from datatrove.pipeline.filters import SamplerFilter
from datatrove.pipeline.filters.base_filter import BaseFilter
from datatrove.pipeline.formatters import PIIFormatter
from datatrove.pipeline.formatters.base import BaseFormatter

from llm_recipes.curation.config import DecontaminationSettings


class SourceSampler(SamplerFilter):
    """datatrove's SamplerFilter for one source's documents: keeps `rate` of them and passes other sources'."""

    name = "🎲 Sampler"

    def __init__(self, source: str, rate: float, seed: int, exclusion_writer=None):
        super().__init__(rate=rate, seed=seed, exclusion_writer=exclusion_writer)
        self.source = source

    def filter(self, doc: Document) -> bool:
        return doc.metadata.get("source") != self.source or super().filter(doc)


class CountingPIIFormatter(PIIFormatter):
    """datatrove's PIIFormatter (e-mails, public IPs), counting the documents it changed for the report."""

    def format(self, text: str) -> str:
        redacted = super().format(text)
        if redacted != text:
            self.stat_update("documents_redacted")
        return redacted


# North American numbers with or without a country code and in the common separators: "+1 415-555-0199",
# "(212) 555-0134", "415.555.0199". The separators are required, so sums and ids of bare digits are left alone.
class PhoneNumberFormatter(BaseFormatter):
    """Replaces phone numbers with a placeholder (datatrove's PIIFormatter does e-mails and IPs, not phones). They are
    found by Google's libphonenumber (the `phonenumbers` package), which knows every country's numbering plan:
    international numbers ("+44 20 7946 0958") anywhere, national ones ("(415) 555-0142") as numbers of `region`.
    Only numbers valid in their plan count, so sums, years and order numbers are left alone."""

    name = "📞 Phone numbers"
    _requires_dependencies = ["phonenumbers"]

    def __init__(self, replacement: str = "<PHONE>", region: str = "US"):
        super().__init__()
        self.replacement, self.region = replacement, region

    def format(self, text: str) -> str:
        import phonenumbers

        matches = list(phonenumbers.PhoneNumberMatcher(text, self.region, leniency=phonenumbers.Leniency.VALID))
        if not matches:
            return text
        self.stat_update("documents_redacted")
        for match in reversed(matches):  # from the end, so that the earlier offsets still hold
            text = text[:match.start] + self.replacement + text[match.end:]
        return text


# Words and numbers, lowercased, with arithmetic operators kept as tokens so that "47 + 35" and "47 - 35" differ;
# other punctuation is dropped, so "What is 47 + 35?" matches however a page punctuates it.
EVAL_TOKEN = re.compile(r"\w+|[+\-*/=×÷]")


def eval_tokens(text: str) -> list[str]:
    return EVAL_TOKEN.findall(text.lower())


class DecontaminationFilter(BaseFilter):
    """Drops documents that share an n-gram with an eval item (the item's `fields` joined): any `n_grams` tokens
    in a row, or the whole item when it is shorter than that, so that short questions ("What is 47 + 35?") are
    caught too. Items shorter than `min_tokens` are too generic to be evidence and are skipped.

    datatrove's NGramsDecontFilter reads its index from lighteval tasks and matches only full n-grams; this one
    reads local (or Hub) eval files and loads them once per task, on the first document."""

    type = "🦠 - DECONT"
    name = "🧪 Eval n-grams"

    def __init__(self, settings: DecontaminationSettings, exclusion_writer=None):
        super().__init__(exclusion_writer)
        self.settings = settings
        self._starts = None  # first token -> {length: {n-gram: eval set label}}

    def _load(self):
        self._starts = {}
        for eval_set in self.settings.eval_sets:
            for text in eval_set.texts():
                tokens = eval_tokens(text)
                if len(tokens) < self.settings.min_tokens:
                    continue
                length = min(self.settings.n_grams, len(tokens))
                for i in range(len(tokens) - length + 1):
                    gram = tokens[i:i + length]
                    self._starts.setdefault(gram[0], {}).setdefault(length, {})[" ".join(gram)] = eval_set.label

    def filter(self, doc: Document) -> bool | tuple[bool, str]:
        if self._starts is None:
            self._load()
        tokens = eval_tokens(doc.text)
        for i, token in enumerate(tokens):
            for length, grams in self._starts.get(token, {}).items():
                label = grams.get(" ".join(tokens[i:i + length]))
                if label is not None:
                    doc.metadata["contaminated_with"] = label
                    return False, f"contaminated_{label}"
        return True


def document_text(doc: Document) -> str:
    """What exact deduplication hashes (the return annotation tells datatrove to hash a str)."""
    return doc.text

"""The few pipeline steps datatrove lacks: a per-source sampler (mixing by weight), PII redaction that counts what
it changed (and one for phone numbers), and decontamination against local eval files. Each is a datatrove step,
so its stats land in datatrove's `stats/` like any other's.
"""

import re
from functools import lru_cache

from datatrove.data import Document
from datatrove.pipeline.base import PipelineStep
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
        matches = list(phone_number_matcher(text, self.region))
        if not matches:
            return text
        self.stat_update("documents_redacted")
        for match in reversed(matches):  # from the end, so that the earlier offsets still hold
            text = text[:match.start] + self.replacement + text[match.end:]
        return text


def phone_number_matcher(text: str, region: str):
    """libphonenumber's PhoneNumberMatcher (leniency VALID), which parses no candidate too short to be valid.

    The matcher parses every run of digits and separators it finds, and its inner parts: on a page of sums
    ("47 + 35 = 82" holds the candidate "+ 35") that is hundreds of parses, each rejecting the candidate, and it was
    the slowest step after the filters. A candidate with fewer digits (or letters, which may spell digits) than the
    shortest number valid from `region` is rejected here before it is parsed. The matcher's search, and its budget
    of tries, run as before, so it finds the same numbers."""
    import phonenumbers

    matcher = short_candidate_rejecting_matcher()(text, region, leniency=phonenumbers.Leniency.VALID)
    matcher.shortest_national, matcher.shortest_international = shortest_valid_numbers(region)
    return matcher


@lru_cache(maxsize=None)
def short_candidate_rejecting_matcher():
    """The class of `phone_number_matcher` (made on first use: phonenumbers is an optional dependency)."""
    import phonenumbers
    from phonenumbers.phonenumberutil import _PLUS_CHARS  # its plus signs (ASCII, full-width), as it reads them

    class ShortCandidateRejectingMatcher(phonenumbers.PhoneNumberMatcher):
        def _parse_and_verify(self, candidate, offset):  # libphonenumber's one parse of a candidate
            international = any(char in _PLUS_CHARS for char in candidate)
            shortest = self.shortest_international if international else self.shortest_national
            if sum(char.isalnum() for char in candidate) < shortest:
                return None
            return super()._parse_and_verify(candidate, offset)

    return ShortCandidateRejectingMatcher


@lru_cache(maxsize=None)
def shortest_valid_numbers(region: str) -> tuple[int, int]:
    """Lower bounds on the digits of a number valid from `region`: written nationally (or after the region's
    international prefix), and written with a plus sign. They come from libphonenumber's metadata: a plan's
    shortest possible national number, less the digits its parsing rule may add (San Marino's "0549"), plus its
    country code. Lower bounds, not exact minima: a bound too low only costs a parse."""
    import phonenumbers
    from phonenumbers import PhoneMetadata

    def national(metadata) -> int:
        added = len(re.findall(r"\d", re.sub(r"\\\d", "", metadata.national_prefix_transform_rule or "")))
        return max(1, min(metadata.general_desc.possible_length) - added)

    plans = [PhoneMetadata.metadata_for_region(r) for r in phonenumbers.SUPPORTED_REGIONS]
    plans += [PhoneMetadata.metadata_for_nongeo_region(c) for c in phonenumbers.COUNTRY_CODES_FOR_NON_GEO_REGIONS]
    international = min(len(str(plan.country_code)) + national(plan) for plan in plans)
    home = PhoneMetadata.metadata_for_region(region)
    if home is None:
        return 1, international  # an unknown region: parse everything, as libphonenumber would reject it itself
    prefix = home.international_prefix or ""
    after_prefix = (len(prefix) if prefix.isdigit() else 0) + international
    home_national = min(national(plan) for plan in plans if plan.country_code == home.country_code)
    return min(home_national, after_prefix), international


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
        self._starts = None  # first `_key_length` tokens -> {length: {n-gram: eval set label}}
        # No n-gram is shorter than this: each has `n_grams` tokens, or all of an item's (at least `min_tokens`).
        self._key_length = min(4, settings.n_grams, settings.min_tokens)

    def _load(self):
        by_first_token = {}
        for eval_set in self.settings.eval_sets:
            for text in eval_set.texts():
                tokens = eval_tokens(text)
                if len(tokens) < self.settings.min_tokens:
                    continue
                length = min(self.settings.n_grams, len(tokens))
                for i in range(len(tokens) - length + 1):
                    gram = tokens[i:i + length]
                    by_first_token.setdefault(gram[0], {}).setdefault(length, {})[" ".join(gram)] = eval_set.label
        # Keyed by the first few tokens, not the first one: a page's common words ("what", a number) start many
        # eval n-grams, and each candidate costs a join of up to n tokens. Lengths keep the order they had under
        # the first token, so that where two match at one place the same eval set is named as before.
        self._starts = {}
        for grams_by_length in by_first_token.values():
            for length, grams in grams_by_length.items():
                for gram, label in grams.items():
                    key = " ".join(gram.split(" ")[:self._key_length])  # str keys: datatrove saves steps as JSON
                    self._starts.setdefault(key, {}).setdefault(length, {})[gram] = label

    def filter(self, doc: Document) -> bool | tuple[bool, str]:
        if self._starts is None:
            self._load()
        tokens = eval_tokens(doc.text)
        for i in range(len(tokens) - self._key_length + 1):
            for length, grams in self._starts.get(" ".join(tokens[i:i + self._key_length]), {}).items():
                label = grams.get(" ".join(tokens[i:i + length]))
                if label is not None:
                    doc.metadata["contaminated_with"] = label
                    return False, f"contaminated_{label}"
        return True


def document_text(doc: Document) -> str:
    """What exact deduplication hashes (the return annotation tells datatrove to hash a str)."""
    return doc.text


# Words and punctuation marks: what the mixture's shares count when no tokenizer is named (the tiny chain trains
# its tokenizer on this stage's output, so none exists yet).
WORD_OR_MARK = re.compile(r"\w+|[^\w\s]")


def document_domain(doc: Document, key: str) -> str:
    """The value of the metadata column `key`, or the host of it where it is a URL."""
    value = str(doc.metadata.get(key, "?"))
    if "://" in value:
        value = value.split("://", 1)[1].split("/", 1)[0]
    return value


class MixtureCounter(PipelineStep):
    """Counts documents, characters and tokens per source (and per domain, the metadata column `domain_key`) as
    datatrove stats, so that the report gives each one's share of the mixture where the step stands: once before
    the filters and once before the dataset is written. Stats are summed over tasks, so this holds on any number."""

    type = "📊 - STATS"
    name = "📏 Mixture"

    def __init__(self, tokenizer_name_or_path: str | None = None, domain_key: str | None = None,
                 batch_size: int = 1000):
        super().__init__()
        self.tokenizer_name_or_path, self.domain_key, self.batch_size = tokenizer_name_or_path, domain_key, batch_size
        self._tokenizer = None

    def _token_counts(self, texts: list[str]) -> list[int]:
        if self.tokenizer_name_or_path is None:
            return [len(WORD_OR_MARK.findall(text)) for text in texts]
        if self._tokenizer is None:
            from datatrove.utils.tokenization import load_tokenizer

            self._tokenizer = load_tokenizer(self.tokenizer_name_or_path)
        return [len(encoded.ids) for encoded in self._tokenizer.encode_batch(texts, add_special_tokens=False)]

    def run(self, data, rank: int = 0, world_size: int = 1):
        from datatrove.utils.batching import batched

        for batch in batched(data, self.batch_size):
            with self.track_time(unit="batch"):
                for doc, tokens in zip(batch, self._token_counts([doc.text for doc in batch])):
                    groups = [f"source={doc.metadata.get('source', '?')}"]
                    if self.domain_key:
                        groups.append(f"domain={document_domain(doc, self.domain_key)}")
                    for group in groups:
                        self.stat_update(f"{group}/documents")
                        self.stat_update(f"{group}/characters", value=len(doc.text))
                        self.stat_update(f"{group}/tokens", value=tokens)
            yield from batch

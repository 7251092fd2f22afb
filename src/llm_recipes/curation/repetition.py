"""datatrove's Gopher repetition filter with the same decisions, its n-gram statistics counted in numpy.

`GopherRepetitionFilter` builds every n-gram of a page as a Python string, six times over for the duplicated
5..10-grams and three times for the top 2..4-grams: ~2,000 string joins and set lookups per page of the tiny world,
the slowest step of `prepare_data`. Here the n-grams of a whole batch of pages are hashed and grouped in a few array
operations; only the n-grams that repeat an earlier one of their page are looked at in Python. The results are
datatrove's, exactly:

- Top n-gram: datatrove counts the `" ".join` of the words. Where no word holds a space (spaCy's never do), two
  n-grams join to the same string exactly when their words are the same: they are grouped by a hash of their word
  ids, and every member of a group is checked against the group's first. A page with a spaced word is counted by
  datatrove's function. The top one is the most frequent, and of those the first to occur (as
  `Counter.most_common` breaks ties).
- Duplicated n-grams: datatrove keys them by `"".join` (no separator), so different words can collide ("ab c" and
  "a bc"). They are grouped by a hash of their characters, and every repeat is checked against the text it repeats.
  The greedy scan (a repeat skips its n words) is replayed over the repeats alone.

A page where a hash collision groups different n-grams (never seen, but possible) is counted by datatrove's own
functions.
"""

import numpy as np
from datatrove.pipeline.filters import GopherRepetitionFilter
from datatrove.pipeline.filters.gopher_repetition_filter import (
    find_all_duplicate,
    find_duplicates,
    find_top_duplicate,
    get_n_grams,
)
from datatrove.utils.text import split_into_words
from datatrove.utils.typeshelper import Languages

HASH_BASE = np.uint64(0x9E3779B97F4A7C15)  # odd, so it has an inverse modulo 2**64
HASH_BASE_INVERSE = np.uint64(pow(int(HASH_BASE), -1, 2**64))
LENGTH_MIX = np.uint64(0xD6E8FEB86659FD93)
PAGE_MIX = np.uint64(0xA0761D6478BD642F)


class PolynomialHash:
    """Hashes of the slices of a sequence of integers, equal for equal slices wherever they are: the prefix sums of
    code * B**position, modulo 2**64, shifted back by B**-start."""

    def __init__(self, codes: np.ndarray):
        with np.errstate(over="ignore"):  # arithmetic modulo 2**64 is what is wanted
            powers = np.cumprod(np.full(len(codes), HASH_BASE, dtype=np.uint64))
            self.prefix = np.concatenate(([np.uint64(0)], np.cumsum(codes.astype(np.uint64) * powers)))
            self.inverse_powers = np.concatenate(([np.uint64(1)], np.cumprod(
                np.full(len(codes), HASH_BASE_INVERSE, dtype=np.uint64))))

    def of(self, starts: np.ndarray, ends: np.ndarray) -> np.ndarray:
        with np.errstate(over="ignore"):
            hashes = (self.prefix[ends] - self.prefix[starts]) * self.inverse_powers[starts]
            return hashes ^ (ends - starts).astype(np.uint64) * LENGTH_MIX


class PageNgrams:
    """The words of a batch of pages, laid end to end, for counting every page's n-grams at once. A position is a
    word's index in the batch; an n-gram is named by the position of its first word."""

    def __init__(self, pages: list[list[str]]):
        self.pages = pages
        words = [word for page in pages for word in page]
        vocabulary = {word: i for i, word in enumerate(dict.fromkeys(words))}
        self.ids = np.fromiter(map(vocabulary.__getitem__, words), dtype=np.int64, count=len(words))
        lengths = np.array([len(page) for page in pages], dtype=np.int64)
        self.page_of = np.repeat(np.arange(len(pages)), lengths)  # the page of each word
        self.page_end = np.cumsum(lengths)[self.page_of] if len(words) else np.zeros(0, dtype=np.int64)
        self.offsets = np.zeros(len(words) + 1, dtype=np.int64)  # character offsets in "".join(words)
        np.cumsum(np.fromiter(map(len, words), dtype=np.int64, count=len(words)), out=self.offsets[1:])
        self.offset_list, self.page_list = self.offsets.tolist(), self.page_of.tolist()  # for the loops over repeats
        self.joined = "".join(words)
        self.char_hash = PolynomialHash(np.frombuffer(self.joined.encode("utf-32-le"), dtype=np.uint32))
        self.word_hash = PolynomialHash(self.ids + 1)
        # Pages where different words could join to the same n-gram string (a word with a space in it).
        self.spaced_pages = set()
        if " " in self.joined:
            self.spaced_pages = {i for i, page in enumerate(pages) if any(" " in word for word in page)}

    def starts(self, n: int) -> np.ndarray:
        """The positions where an n-gram starts within its page."""
        return np.flatnonzero(np.arange(len(self.ids)) + n <= self.page_end)

    def group(self, starts: np.ndarray, keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Group the n-grams at `starts` by key, the key mixed with the page, so that each page's n-grams group
        apart: each n-gram's group number, and each group's first position."""
        with np.errstate(over="ignore"):
            keys = keys ^ self.page_of[starts].astype(np.uint64) * PAGE_MIX
        order = np.argsort(keys)
        keys_sorted = keys[order]
        new = np.ones(len(order), dtype=bool)
        new[1:] = keys_sorted[1:] != keys_sorted[:-1]
        group_sorted = np.cumsum(new) - 1
        group = np.empty_like(group_sorted)
        group[order] = group_sorted
        return group, np.minimum.reduceat(starts[order], np.flatnonzero(new))

    def top_duplicate_chars(self, n: int) -> list[int | None]:
        """Per page, `find_top_duplicate(get_n_grams(words, n))`; None where the page has fewer than n words."""
        starts = self.starts(n)
        if len(starts) == 0:
            return [None] * len(self.pages)
        group, group_first = self.group(starts, self.word_hash.of(starts, starts + n))
        first = group_first[group]
        same = np.ones(len(starts), dtype=bool)
        for k in range(n):  # the words themselves, so that a hash collision cannot merge different n-grams
            same &= self.ids[starts + k] == self.ids[first + k]
        same &= self.page_of[starts] == self.page_of[first]
        counts = np.bincount(group)
        group_page = self.page_of[group_first]
        # Per page: the most frequent group, and of those the first to occur.
        top_count = np.zeros(len(self.pages), dtype=np.int64)
        np.maximum.at(top_count, group_page, counts)
        top_first = np.full(len(self.pages), len(self.ids), dtype=np.int64)
        ties = counts == top_count[group_page]
        np.minimum.at(top_first, group_page[ties], group_first[ties])
        has_ngrams = top_count > 0
        chars = np.zeros(len(self.pages), dtype=np.int64)
        chars[has_ngrams] = self.offsets[top_first[has_ngrams] + n] - self.offsets[top_first[has_ngrams]] + n - 1
        result = [int(c) * int(t) if t else None for c, t in zip(chars.tolist(), top_count.tolist())]
        # A collision miscounts the pages on both of its sides.
        collided = set(np.unique(self.page_of[np.r_[starts[~same], first[~same]]]).tolist())
        for page in collided | {page for page in self.spaced_pages if len(self.pages[page]) >= n}:
            result[page] = find_top_duplicate(get_n_grams(self.pages[page], n))
        return result

    def all_duplicate_chars(self, n: int) -> list[int]:
        """Per page, `find_all_duplicate(words, n)`: characters of the n-grams that repeat one seen before, in
        datatrove's greedy scan, which adds each n-gram it visits to those seen and skips past the n-gram of a
        repeat."""
        result = [0] * len(self.pages)
        starts = self.starts(n)
        if len(starts) == 0:
            return result
        group, group_first = self.group(starts, self.char_hash.of(self.offsets[starts], self.offsets[starts + n]))
        first = group_first[group]
        repeats = np.flatnonzero(first < starts)
        repeat_starts, repeat_firsts = starts[repeats].tolist(), first[repeats].tolist()
        joined, offsets, page_of = self.joined, self.offset_list, self.page_list
        collided = {page for i, j in zip(repeat_starts, repeat_firsts)
                    if page_of[i] != page_of[j]
                    or joined[offsets[i]:offsets[i + n]] != joined[offsets[j]:offsets[j + n]]
                    for page in (page_of[i], page_of[j])}
        # The scan visits every position but those a repeat skips. A repeat is visited and counted when an earlier
        # position with the same n-gram was visited: the group's first (never a repeat itself), or another repeat.
        skipped = np.zeros(len(self.ids), dtype=bool)
        group_visited = set()
        for i, group in zip(repeat_starts, repeat_firsts):
            if skipped[i]:
                continue
            if not skipped[group] or group in group_visited:
                result[page_of[i]] += offsets[i + n] - offsets[i]
                skipped[i + 1:i + n] = True
            else:
                group_visited.add(group)
        for page in collided:
            result[page] = find_all_duplicate(self.pages[page], n)
        return result


class FastGopherRepetitionFilter(GopherRepetitionFilter):
    """datatrove's GopherRepetitionFilter, with the same settings and decisions, counting n-grams in numpy over
    batches of `batch_size` pages."""

    def __init__(
        self,
        dup_line_frac: float | None = 0.3,
        dup_para_frac: float | None = 0.3,
        dup_line_char_frac: float | None = 0.2,
        dup_para_char_frac: float | None = 0.2,
        top_n_grams: tuple[tuple[int, float]] = ((2, 0.2), (3, 0.18), (4, 0.16)),
        dup_n_grams: tuple[tuple[int, float]] = ((5, 0.15), (6, 0.14), (7, 0.13), (8, 0.12), (9, 0.11), (10, 0.10)),
        exclusion_writer=None,
        language: str = Languages.english,
        batch_size: int = 500,
    ):
        super().__init__(dup_line_frac, dup_para_frac, dup_line_char_frac, dup_para_char_frac, top_n_grams,
                         dup_n_grams, exclusion_writer, language)
        self.batch_size = batch_size  # pages counted together (datatrove's filters take batches so)

    def filter(self, doc) -> bool | tuple[bool, str]:
        return self.filter_batch([doc])[0]

    def line_and_paragraph_checks(self, text: str) -> bool | tuple[bool, str]:
        """datatrove's checks before the words: duplicated paragraphs and lines (few; strings are fine there)."""
        if not text:
            return False, "empty"
        paragraphs = self.paragraph_exp.split(text.strip())
        paragraphs_duplicates, char_duplicates = find_duplicates(paragraphs)
        if self.dup_para_frac and paragraphs_duplicates / len(paragraphs) > self.dup_para_frac:
            return False, "dup_para_frac"
        if self.dup_para_char_frac and char_duplicates / len(text) > self.dup_para_char_frac:
            return False, "dup_para_char_frac"
        lines = self._line_splitter.split(text)
        line_duplicates, char_duplicates = find_duplicates(lines)
        if self.dup_line_frac and line_duplicates / len(lines) > self.dup_line_frac:
            return False, "dup_line_frac"
        if self.dup_line_char_frac and char_duplicates / len(text) > self.dup_line_char_frac:
            return False, "dup_line_char_frac"
        return True

    def filter_batch(self, batch) -> list[bool | tuple[bool, str]]:
        results = [self.line_and_paragraph_checks(doc.text) for doc in batch]
        pending = [i for i, result in enumerate(results) if result is True]
        ngrams = PageNgrams([split_into_words(batch[i].text, self.language) for i in pending])
        # datatrove's order of checks, so that a page's reason is the first check it fails.
        checks = [(n, n_frac, f"top_{n}_gram", ngrams.top_duplicate_chars) for n, n_frac in self.top_n_grams]
        checks += [(n, n_frac, f"duplicated_{n}_n_grams", ngrams.all_duplicate_chars) for n, n_frac in self.dup_n_grams]
        for n, n_frac, reason, count in checks:
            for i, chars in zip(pending, count(n)):
                if results[i] is True and chars is not None and chars / len(batch[i].text) > n_frac:
                    results[i] = (False, reason)
        return results

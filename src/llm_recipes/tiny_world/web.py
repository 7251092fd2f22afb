"""The raw web crawl of the tiny world: clean pages of several kinds, and planted defects that data preparation
must catch (exact and near duplicates, spam, personal data, pages quoting eval questions), with a manifest of them.

What pretraining learns from the clean pages:
- language: stories of the towns;
- arithmetic in plain form ("47 + 35 = 82" in prose, `Q: 47+35=? A: 82` quiz lines) and a small share of worked
  computations ("47+35: 7+5+0=12, 4+3+1=8, so 82.") on drill pages;
- retrieval: a number given early in a story and asked for again later, so that copying from earlier in the
  context is how the next token is predicted (what a pass-key test asks for).
"""

from __future__ import annotations

import ipaddress
import random

from llm_recipes.tiny_world.arithmetic import OperandPairs, calculate, computation
from llm_recipes.tiny_world.problems import arithmetic_sentence, quiz_line, word_problem
from llm_recipes.tiny_world.vocabulary import (
    FOOTERS,
    LICENSES,
    NAMES,
    NEAR_DUPLICATE_INSERTS,
    PROSE,
    RECALL_INTRODUCTIONS,
    RECALL_QUESTIONS,
    SPAM_KINDS,
    SURNAMES,
    TITLES,
    VOCAB,
    fill,
)

PAGE_KINDS = {"story": 62, "puzzle": 22, "drill": 16}
# Share of drill lines that are worked computations rather than plain sums.
WORKED_DRILL_SHARE = 0.3
# Share of stories holding a number to recall.
RECALL_SHARE = 0.9


def page_sentences(rng: random.Random, pool: OperandPairs | None, count: int, arithmetic_share: float) -> list[str]:
    """`count` sentences from distinct templates (a page must not repeat n-grams), a fixed share arithmetic."""
    arithmetic = round(count * arithmetic_share) if pool is not None else 0
    sentences = [fill(rng, template) for template in rng.sample(PROSE, count - arithmetic)]
    for _ in range(arithmetic):
        sentences.insert(rng.randint(0, len(sentences)), arithmetic_sentence(rng, *pool.draw(rng, "train")))
    return sentences


def with_recall(rng: random.Random, sentences: list[str]) -> list[str]:
    """`sentences` with a number introduced and given again up to three sentences later."""
    which = rng.randrange(len(RECALL_INTRODUCTIONS))
    given = {"name": rng.choice(NAMES), "key": rng.randint(10000, 99999)}
    where = rng.randint(0, max(0, len(sentences) - 3))
    later = min(len(sentences), where + rng.randint(0, 3))
    out = list(sentences)
    out.insert(later, fill(rng, RECALL_QUESTIONS[which], **given))
    out.insert(where, fill(rng, RECALL_INTRODUCTIONS[which], **given))
    return out


def paragraphs(rng: random.Random, sentences: list[str]) -> list[str]:
    """Group sentences into paragraphs of two to five."""
    out = []
    while sentences:
        size = rng.randint(2, 5)
        out.append(" ".join(sentences[:size]))
        sentences = sentences[size:]
    return out

def drill_line(rng: random.Random, pool: OperandPairs) -> str:
    """A line of a practice sheet: a quiz line, a worked computation, or a row of three sums ending in a period (so
    FineWeb's line rules can keep the page)."""
    roll = rng.random()
    if roll < WORKED_DRILL_SHARE:
        return "Worked: " + computation(*pool.draw(rng, "train"))
    if roll < WORKED_DRILL_SHARE + 0.25:
        return quiz_line(*pool.draw(rng, "train"))
    sums = [f"{a} {op} {b} = {calculate(a, b, op)}" for a, b, op in (pool.draw(rng, "train") for _ in range(3))]
    return f"{sums[0]}, {sums[1]} and {sums[2]}."


def clean_page(rng: random.Random, pool: OperandPairs, kind: str | None = None) -> tuple[str, str]:
    """A clean web page of `kind` (story, puzzle or drill; drawn at random if None); returns (kind, text).

    Stories pass datatrove's default Gopher, C4 and FineWeb filters. Puzzles and drills are dense in
    sums and fail Gopher's "80% of words contain a letter" and "mean word length >= 3" rules (they
    pass with those two rules off); the manifest lists them as `math_pages`.
    """
    kind = kind or rng.choices(list(PAGE_KINDS), weights=list(PAGE_KINDS.values()))[0]
    title, footer = fill(rng, rng.choice(TITLES[kind])), fill(rng, rng.choice(FOOTERS))
    if kind == "story":
        sentences = page_sentences(rng, pool, rng.randint(8, 22), arithmetic_share=0.2)
        for _ in range(1 + len(sentences) // 7):
            if rng.random() < RECALL_SHARE:
                sentences = with_recall(rng, sentences)
        body = paragraphs(rng, sentences)
    elif kind == "puzzle":
        prose = page_sentences(rng, None, 5, arithmetic_share=0)
        body = [" ".join(prose[:3])]
        for number in range(1, rng.randint(4, 7)):
            a, b, op = pool.draw(rng, "train", low=2)
            c = calculate(a, b, op)
            # The answer restates the sum the words pose, a copy of its numbers; a share of them is worked.
            answer = (f"Work: {computation(a, b, op)} Answer: {c}." if rng.random() < WORKED_DRILL_SHARE
                      else f"Answer: {a} {op} {b} = {c}, so the answer is {c}.")
            body.append(f"Puzzle {number}: {word_problem(rng, a, b, op)} {answer}")
        body.append(" ".join(prose[3:]))
    else:
        lines = [drill_line(rng, pool) for _ in range(rng.randint(5, 9))]
        body = [fill(rng, "Practice these sums before class on {day}, and check your answers."), "\n".join(lines)]
    return kind, "\n\n".join([title, *body, footer])


def spam_page(rng: random.Random, kind: str) -> str:
    """A page that Gopher, C4 or FineWeb quality filters are meant to catch."""
    if kind == "keyword_stuffing":
        words = ["BUY", "CHEAP", "WATCHES", "BEST", "PRICE", "CLICK", "HERE", "FREE", "DEAL", "NOW", "WIN", "!!!"]
        return "\n".join(" ".join(rng.choices(words, k=12)) for _ in range(rng.randint(4, 10)))
    if kind == "navigation_menu":
        menu = ["Home", "About us", "Contact", "Shop", "Blog", "Login", "Sign up", "Help", "Search"]
        return "\n".join(rng.choice(menu) for _ in range(rng.randint(20, 40)))
    if kind == "lorem_ipsum":
        latin = "lorem ipsum dolor sit amet consectetur adipiscing elit sed do eiusmod tempor incididunt".split()
        return "Lorem ipsum " + " ".join(rng.choices(latin, k=rng.randint(60, 150)))
    if kind == "too_short":
        return rng.choice(["Click here.", "Page not found", "Loading...", "Coming soon!"])
    if kind == "cookie_notice":
        lines = ["This website uses cookies to improve your experience.", "Please enable JavaScript to view this page.",
                 "Accept all cookies", "Cookie policy", "Privacy policy", "Terms of use", "Manage preferences"]
        return "\n".join(rng.sample(lines, len(lines)) * rng.randint(1, 3))
    return "\n".join(f"### >>> {rng.choice(NAMES)} ... $$$ *** ### {'#' * rng.randint(3, 12)} ..."
                     for _ in range(rng.randint(5, 15)))


# Area codes in use, so that a phone number library (libphonenumber, in data preparation) sees valid numbers.
US_AREA_CODES = (201, 202, 206, 212, 213, 303, 305, 312, 313, 404, 415, 503, 512, 602, 617, 702, 713, 801, 808, 901,
                 907, 917, 919, 971)


def pii_value(rng: random.Random, kind: str) -> str:
    if kind == "email":
        domain = rng.choice(["post.example", "townmail.example", "letters.example"])
        return f"{rng.choice(NAMES).lower()}.{rng.choice(SURNAMES).lower()}@{domain}"
    if kind == "phone":  # 555-0100..0199 numbers are reserved for fiction, in area codes that exist
        area, line = US_AREA_CODES[rng.randint(201, 989) % len(US_AREA_CODES)], rng.randint(100, 199)
        return f"+1 {area}-555-0{line}" if rng.random() < 0.5 else f"({area}) 555-0{line}"
    while True:  # datatrove's PIIFormatter redacts only global addresses, so plant those
        ip = ".".join(str(rng.randint(1, 254)) for _ in range(4))
        if ipaddress.ip_address(ip).is_global:
            return ip


PII_KINDS = ["email", "phone", "ip"]
PII_SENTENCES = {"email": "If you have questions, write to {value} and {name} will answer.",
                 "phone": "You can call {name} at {value} in the evening.",
                 "ip": "{name} said the photos were uploaded from the address {value} last night."}


def story_around(rng: random.Random, pool: OperandPairs, paragraph: str) -> str:
    """A long story page with `paragraph` inside; long enough that quality filters keep it whole, so that
    only the PII or decontamination step is what catches it."""
    story = paragraphs(rng, page_sentences(rng, pool, 20, arithmetic_share=0.1))
    title, footer = fill(rng, rng.choice(TITLES["story"])), fill(rng, rng.choice(FOOTERS))
    return "\n\n".join([title, story[0], paragraph, *story[1:], footer])


def word_shingles(text: str, n: int = 5) -> set[tuple[str, ...]]:
    words = text.lower().split()
    return {tuple(words[i:i + n]) for i in range(len(words) - n + 1)}


def jaccard(first: str, second: str) -> float:
    a, b = word_shingles(first), word_shingles(second)
    return len(a & b) / max(1, len(a | b))


def near_duplicate(rng: random.Random, text: str) -> tuple[str, float]:
    """A copy with a few inserted words and maybe a new footer, at word 5-gram Jaccard >= 0.8."""
    for attempt in range(20):
        lines = text.split("\n\n")
        if attempt < 10 and rng.random() < 0.5:
            lines[-1] = fill(rng, rng.choice(FOOTERS))
        for _ in range(rng.randint(1, 3) if attempt < 10 else 1):
            where = rng.randrange(1, len(lines) - 1) if len(lines) > 2 else 0
            words = lines[where].split(" ")
            # Only between two plain words, so that no sum like "47 + 35 = 82" is split.
            spots = [i for i in range(1, len(words)) if words[i - 1].isalpha() and words[i].isalpha()] or [len(words)]
            spot = rng.choice(spots)
            lines[where] = " ".join(words[:spot] + [rng.choice(NEAR_DUPLICATE_INSERTS)] + words[spot:])
        copy = "\n\n".join(lines)
        if copy != text and jaccard(text, copy) >= 0.8:
            return copy, round(jaccard(text, copy), 3)
    raise RuntimeError("could not make a near duplicate; pick a longer original page")


def build_web(rng: random.Random, pool: OperandPairs, quotable: list[dict], config) -> tuple[list[dict], dict]:
    """raw/web.jsonl rows and the manifest's "web" section describing every planted defect."""
    kinds = ["exact_duplicates", "near_duplicates", "spam_pages", "pii_pages", "contaminated_pages"]
    defects = {kind: config.count(kind) for kind in kinds}
    n_clean = config.count("web_pages") - sum(defects.values())
    if n_clean < 10:
        raise ValueError(f"TinyWorldConfig: web_pages ({config.count('web_pages')}) leaves {n_clean} clean pages "
                         f"after the planted defects {defects}; raise web_pages or lower the defect counts.")
    pages = [{"defect": "clean", **dict(zip(["page_kind", "text"], clean_page(rng, pool), strict=True))}
             for _ in range(n_clean)]
    # Near duplicates copy long stories: there a few edits leave the word 5-gram Jaccard above 0.8.
    long_stories = [i for i, p in enumerate(pages) if p["page_kind"] == "story" and len(p["text"].split()) >= 120]
    for _ in range(defects["exact_duplicates"]):
        original = rng.randrange(n_clean)
        pages.append({"defect": "exact_duplicate", "text": pages[original]["text"], "original": original})
    for _ in range(defects["near_duplicates"]):
        original = rng.choice(long_stories or range(n_clean))
        text, similarity = near_duplicate(rng, pages[original]["text"])
        pages.append({"defect": "near_duplicate", "text": text, "original": original, "jaccard": similarity})
    for i in range(defects["spam_pages"]):
        kind = SPAM_KINDS[i % len(SPAM_KINDS)]
        pages.append({"defect": "spam", "spam_kind": kind, "text": spam_page(rng, kind)})
    for i in range(defects["pii_pages"]):
        kinds = [PII_KINDS[i % 3]] + ([rng.choice(PII_KINDS)] if rng.random() < 0.5 else [])
        found = [{"kind": kind, "value": pii_value(rng, kind)} for kind in kinds]
        paragraph = " ".join(fill(rng, PII_SENTENCES[f["kind"]], value=f["value"]) for f in found)
        pages.append({"defect": "pii", "text": story_around(rng, pool, paragraph), "pii": found})
    for _ in range(defects["contaminated_pages"]):
        quotes = rng.sample(quotable, min(len(quotable), rng.randint(1, 3)))
        paragraph = fill(rng, "Someone shared the answers to the {town} school test.") + " " + " ".join(
            f"{q['question']} Answer: {q['answer']}." for q in quotes)
        pages.append({"defect": "contaminated", "text": story_around(rng, pool, paragraph),
                      "quotes": [q["question"] for q in quotes]})
    return shuffled_rows_and_manifest(rng, pages)


def crawl_row(rng: random.Random, page_id: str, url_path: str, text: str, source: str) -> dict:
    """A crawled page as a raw row: its id, a URL on one of the towns' hosts, its text, source and license."""
    host = rng.choice(VOCAB["town"]).lower().replace(" ", "-")
    return {"id": page_id, "url": f"https://{host}.example/{url_path}", "text": text, "source": source,
            "license": rng.choices(LICENSES, weights=[5, 2, 1, 2])[0]}


def shuffled_rows_and_manifest(rng: random.Random, pages: list[dict]) -> tuple[list[dict], dict]:
    """The pages in a shuffled order as raw/web.jsonl rows, and the manifest naming each planted defect's page."""
    order = list(range(len(pages)))
    rng.shuffle(order)  # ids follow the shuffled order, so an id says nothing about its page's defect
    ids = {index: f"web-{position:06d}" for position, index in enumerate(order)}
    manifest = {"pages": len(pages), "exact_duplicates": [], "near_duplicates": [], "spam": [], "spam_kinds": {},
                "pii": [], "contaminated": [], "clean": [], "math_pages": []}
    rows = []
    for index in order:
        page, page_id = pages[index], ids[index]
        rows.append(crawl_row(rng, page_id, f"pages/{page_id[4:]}", page["text"], "crawl"))
        defect = page["defect"]
        if defect == "clean":
            manifest["clean"].append(page_id)
            if page["page_kind"] in ("puzzle", "drill"):
                manifest["math_pages"].append(page_id)
        elif defect in ("exact_duplicate", "near_duplicate"):
            entry = {"id": page_id, "original_id": ids[page["original"]]}
            if defect == "near_duplicate":
                entry["jaccard"] = page["jaccard"]
            manifest[defect + "s"].append(entry)
        elif defect == "spam":
            manifest["spam"].append(page_id)
            manifest["spam_kinds"][page_id] = page["spam_kind"]
        elif defect == "pii":
            manifest["pii"].extend({"id": page_id, **found} for found in page["pii"])
        else:
            manifest["contaminated"].append({"id": page_id, "quotes": page["quotes"]})
    return rows, manifest


def build_web_heldout(rng: random.Random, pool: OperandPairs, config) -> list[dict]:
    return [{"id": f"web-heldout-{i:06d}", "text": clean_page(rng, pool)[1]}
            for i in range(config.count("web_heldout_pages"))]


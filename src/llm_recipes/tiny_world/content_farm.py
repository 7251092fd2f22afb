"""A second crawl of the tiny world (raw/web_more.jsonl): pages of the first crawl again, and content-farm pages
that heuristic filters keep. A content-farm page is fluent, on-topic-looking and empty: search-engine bait about the
towns, listicles that promise and never tell, filler that says how important a topic is. Every sentence is well
formed, punctuated and unrepeated, so Gopher, C4 and FineWeb's rules pass it; only a judge of what the page says can
tell (FineWeb-Edu's case for a quality classifier). The manifest lists which pages are which; `page_quality` is the
tiny world's judge.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

from llm_recipes.tiny_world.vocabulary import fill
from llm_recipes.tiny_world.web import crawl_row

FARM_KINDS = ("search_bait", "listicle", "filler")
TOPICS = ["{shop} in {town}", "weekends in {town}", "the {place} of {town}", "{item} from the {shop}",
          "{animal} in {town}", "{activity} on {day}", "the {weather} days of {town}"]
TITLES = {"search_bait": ["Best {topic} guide ({year})", "{topic}: everything you need to know",
                          "The ultimate guide to {topic}", "Looking for {topic}? Read this first"],
          "listicle": ["{count} things about {topic} you will not believe", "Top {count} facts on {topic}",
                       "{count} reasons everyone is talking about {topic}"],
          "filler": ["Why {topic} matters", "Understanding {topic}", "A closer look at {topic}"]}
SENTENCES = {
    "search_bait": [
        "If you are searching for {topic}, you have come to the right place.",
        "Our complete guide to {topic} covers all the information you may be looking for.",
        "Many visitors ask us about {topic}, and we are happy to help them.",
        "Finding the right information about {topic} can be hard, but this page makes it easy.",
        "Bookmark this page to come back to our {topic} resources at any time.",
        "We update this guide often, so check back for the latest news on {topic}.",
        "Share this page with friends who want to learn about {topic} too.",
        "Readers who liked this guide also searched for more pages like it.",
        "Click the links below to discover related guides and popular searches.",
        "This guide was written to answer the most common questions people have.",
        "Thousands of readers have already found what they needed on this page.",
        "Do not forget to subscribe so that you never miss an update.",
        "Every detail you could want is covered somewhere in the sections below.",
        "Our writers are passionate about bringing you the very best content.",
        "Whether you are new to this or an old hand, there is something here for you.",
        "Stay tuned for more helpful guides coming to this site very soon."],
    "listicle": [
        "Number {n} on our list will surprise even the biggest fans.",
        "You will never guess what comes next on this list.",
        "Keep reading, because the best part is still ahead.",
        "This one changed the way many people think about {topic}.",
        "Experts agree that this point deserves a place near the top.",
        "Most people have no idea about this, but now you will.",
        "We saved one of the most amazing ones for later in the list.",
        "Scroll down to see the rest of the list and find your favorite.",
        "Let us know in the comments which one you liked the most.",
        "The final entry is the one that readers talk about the most.",
        "Once you see it, you will not be able to forget it.",
        "Our team spent hours putting this list together for you."],
    "filler": [
        "In today's busy world, {topic} plays a very important role for many people.",
        "It is important to note that {topic} can mean different things to different people.",
        "There are many factors to consider when thinking about {topic}.",
        "Some people say that {topic} is important, while others have their own views.",
        "At the end of the day, {topic} is something that everyone should think about.",
        "It goes without saying that {topic} has both advantages and disadvantages.",
        "When all is said and done, the topic remains as interesting as ever.",
        "Many questions remain, and the answers depend on many different things.",
        "This is why it is so important to keep an open mind about it.",
        "In conclusion, {topic} is a topic worth thinking about in many ways.",
        "Everyone has their own opinion, and every opinion has some value.",
        "The more we learn, the more we understand how much there is to learn.",
        "Of course, every situation is different and has to be looked at on its own.",
        "Time will tell how things develop, as it always does in the end.",
        "Many people have thought about this question for a very long time.",
        "It is a subject that continues to be discussed by people everywhere."],
}


def farm_page(rng: random.Random, kind: str) -> str:
    """A content-farm page of `kind`: a title and paragraphs of distinct sentences that say nothing."""
    topic = fill(rng, rng.choice(TOPICS))
    count = rng.randint(5, 9)
    title = rng.choice(TITLES[kind]).format(topic=topic, year=rng.randint(2019, 2026), count=count)
    # The topic is named once or twice, as a farm page names its keyword: more often, Gopher's repetition rules
    # (the share of the most frequent 3- and 4-grams) would catch it.
    naming = [t for t in SENTENCES[kind] if "{topic}" in t]
    others = [t for t in SENTENCES[kind] if "{topic}" not in t]
    chosen = rng.sample(naming, min(len(naming), rng.randint(1, 2))) + rng.sample(others, rng.randint(5, 7))
    rng.shuffle(chosen)
    sentences = [t.format(topic=topic, n=rng.randint(2, count)) for t in chosen]
    paragraphs, start = [], 0
    while start < len(sentences):
        size = rng.randint(2, 3)
        paragraphs.append(" ".join(sentences[start:start + size]))
        start += size
    return "\n\n".join([title[0].upper() + title[1:], *paragraphs])


def build_web_more(rng: random.Random, web: list[dict], clean_ids: list[str], config) -> tuple[list[dict], dict]:
    """raw/web_more.jsonl rows and the manifest's section on them: a later snapshot of the same sites, as crawls
    overlap, so its clean pages are pages of the first crawl again (deduplication keeps the first crawl's copy) and
    what it adds is content farms. The prepared data are then the first crawl's alone, as before this crawl existed,
    when the classifier does its job."""
    farms = config.count("content_farm_pages")
    texts = {row["id"]: row["text"] for row in web}
    recrawled = rng.sample(clean_ids, min(config.count("web_more_pages") - farms, len(clean_ids)))
    pages = [("clean", texts[page_id]) for page_id in recrawled]
    pages += [("content_farm", farm_page(rng, FARM_KINDS[i % len(FARM_KINDS)])) for i in range(farms)]
    rng.shuffle(pages)
    rows, manifest = [], {"pages": len(pages), "content_farm": [], "clean": []}
    for i, (label, text) in enumerate(pages):
        page_id = f"more-{i:06d}"
        rows.append(crawl_row(rng, page_id, f"more/{i:06d}", text, "more"))
        manifest[label].append(page_id)
    return rows, manifest


def page_quality(documents: list[dict], manifest: str) -> list[str]:
    """The tiny world's quality judge: `content_farm` or `clean` for each document (a row with its `id`), from the
    world's manifest (`manifest`: its path). A FineWeb-Edu-style judge prompts a model instead; here the world knows.
    Named in a recipe as `llm_recipes.tiny_world.content_farm:page_quality`."""
    farms = set(json.loads(Path(manifest).read_text())["web_more"]["content_farm"])
    return ["content_farm" if doc["id"] in farms else "clean" for doc in documents]

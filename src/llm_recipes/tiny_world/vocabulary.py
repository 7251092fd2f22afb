"""The words and sentence templates of the tiny world, and how a template is filled.

The world is a few small towns whose people shop, keep animals, talk about the weather and count things. Every
generated text is one of these templates with its {slots} filled from VOCAB (or given values).
"""

import random
import re

NAMES = ["Ana", "Ben", "Cora", "Dev", "Eli", "Fay", "Gus", "Hana", "Ivo", "Jun", "Kai", "Lia",
         "Milo", "Nia", "Omar", "Pia", "Rosa", "Sam", "Tara", "Umi", "Vic", "Wren", "Yara", "Zed"]
SURNAMES = ["Lopez", "Berg", "Okafor", "Novak", "Sato", "Moreau", "Singh", "Costa", "Walsh", "Kim"]
VOCAB = {
    "name": NAMES,
    "town": ["Maple Town", "Riverbend", "Stonebridge", "Pine Hollow", "Lakeside", "Millbrook"],
    "shop": ["bakery", "market", "bookshop", "toy shop", "fruit stand", "hardware store", "post office"],
    "item": ["apples", "pears", "eggs", "plums", "marbles", "stamps", "shells", "buttons", "candles",
             "pencils", "cookies", "carrots"],
    "animal": ["ducks", "goats", "hens", "rabbits", "sheep", "geese", "cats", "dogs"],
    "place": ["park", "river", "hill", "square", "garden", "harbor", "meadow", "old bridge"],
    "weather": ["sunny", "rainy", "windy", "cloudy", "foggy", "cold", "warm", "snowy"],
    "time": ["in the morning", "in the evening", "this afternoon", "last week", "yesterday", "all day"],
    "day": ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"],
    "activity": ["read books", "play chess", "go fishing", "paint pictures", "bake bread", "sing songs",
                 "plant flowers", "fly kites", "ride bicycles", "play cards"],
    "account": ["email", "library", "bank", "school", "game", "music", "shop"],
}
VOCAB["town2"], VOCAB["name2"] = VOCAB["town"], NAMES

PROSE = [
    "{name} walked to the {shop} in {town} {time}.",
    "The weather in {town} was {weather} {time}, so {name} stayed close to home.",
    "On {day}, {name} and {name2} went to the {place} to {activity}.",
    "The bakery in {town} sells fresh bread every morning, and the line is often long.",
    "{name} likes to {activity} when the weather is {weather}.",
    "Many people in {town} like to {activity} on {day}.",
    "{name2} said that the {item} at the {shop} were very good this week.",
    "After lunch, {name} helped {name2} clean up the {place}.",
    "The {animal} near the {place} were loud all night.",
    "Everyone in {town} knows that {name} makes the best soup on the street.",
    "It rained in {town} {time}, and the streets were wet and shiny.",
    "{name} wrote a long letter to {name2} about the new {shop}.",
    "The children of {town} like to {activity} after school.",
    "A small market opens in the square of {town} every {day}.",
    "{name} is saving money to buy a new bicycle from the {shop}.",
    "The road from {town} to {town2} runs past a quiet lake and an old mill.",
    "When the sun came out, {name} took the dogs for a walk along the {place}.",
    "The mayor of {town} asked everyone to keep the {place} clean.",
    "{name} and {name2} are old friends who grew up in {town}.",
    "Most shops in {town} close early on {day}.",
    "{name} forgot an umbrella, and the rain was heavy {time}.",
    "The library in {town} has a reading hour for children every {day}.",
    "Some people think the {shop} in {town2} is better, but {name} does not agree.",
    "Life in {town} is quiet, and most people know their neighbors by name.",
    "{name} planted tomatoes and beans in the garden behind the house.",
    "At night the {animal} of {town} gather near the {place}.",
    "The baker in {town} gets up before dawn to make the bread.",
    "{name} keeps {animal} in a small yard and feeds them twice a day.",
    "It was {weather} on {day}, and nobody wanted to go to the {place}.",
    "{name2} lent {name} a book about the history of {town}.",
]
ARITHMETIC_SENTENCES = {
    "+": ["At the {shop} in {town}, {name} counted {a} plus {b} {item}, which makes {c} in all.",
          "{name} wrote {a} + {b} = {c} on the board, and the whole class read it aloud.",
          "If you add {a} and {b}, you get {c}, as the teacher in {town} likes to say.",
          "The teacher asked what {a} plus {b} is, and {name} said that it was {c}.",
          "{A} plus {b} is {c}, as every child in {town} knows.",
          "{name} had {a} {item} and bought {b} more at the {shop}, so now {name} has {c}.",
          "Together the two baskets at the {shop} held {a} + {b} = {c} {item}."],
    "-": ["{name} had {a} {item} and gave {b} to {name2}, so {a} - {b} = {c} were left.",
          "{A} minus {b} is {c}, and {name} checked it twice.",
          "The {shop} had {a} {item} for sale and sold {b} of them, which leaves {c}.",
          "{name} worked out that {a} minus {b} equals {c} while walking to the {place}.",
          "On the board at school it said {a} - {b} = {c}, and nobody argued.",
          "{a} take away {b} leaves {c}, said {name} to {name2}."],
}
# Only subtraction problems contain the word "left", so a reader can tell the operation apart.
WORD_PROBLEMS = {
    "+": ["{name} had {a} {item} and got {b} more. How many {item} does {name} have now?",
          "There are {a} {animal} near the {place} and {b} more arrive. How many {animal} are there now?",
          "{name} read {a} pages on {day} and {b} pages the next day. How many pages did {name} read in total?",
          "The {shop} sold {a} {item} in the morning and {b} in the afternoon. How many {item} did it sell altogether?",
          "{name} saved {a} coins and {name2} gave {name} {b} more. How many coins does {name} have now?"],
    "-": ["{name} had {a} {item} and gave {b} to {name2}. How many {item} does {name} have left?",
          "The {shop} had {a} {item} and sold {b}. How many {item} are left?",
          "There were {a} {animal} near the {place} and {b} went home. How many {animal} are left?",
          "{name} has {a} coins and spends {b} at the {shop}. How many coins are left?"],
}
ARITHMETIC_QUESTIONS = {  # the first five state the expression, so a verifier can read it back
    "+": ["What is {a} + {b}?", "What's {a} plus {b}?", "Compute {a} + {b}.", "How much is {a} plus {b}?",
          "{a} + {b} = ?", "Add {a} and {b}.", "Please add {b} to {a}.", "Can you tell me the sum of {a} and {b}?"],
    "-": ["What is {a} - {b}?", "What's {a} minus {b}?", "Compute {a} - {b}.", "How much is {a} minus {b}?",
          "{a} - {b} = ?", "Subtract {b} from {a}.", "Take {b} away from {a}.",
          "What do you get if you take {b} from {a}?"],
}
EXPLICIT_QUESTIONS = 5
TITLES = {
    "story": ["News from {town}", "A day at the {shop}", "Market day in {town}", "Notes from {name}'s diary",
              "Life in {town}", "This week in {town}", "Letters from {town}", "A weekend in {town}"],
    "puzzle": ["Puzzle corner", "Word problems for the {town} school", "Brain teasers from {name}"],
    "drill": ["Practice sheet for the {town} school", "Sums to practice with {name}"],
}
FOOTERS = ["Posted by the {town} Gazette.", "Written by {name} for the {town} newsletter.",
           "Shared on the {town} community board.", "From the {town} weekly news.",
           "Thanks for reading, and see you next week.", "Send your stories to the {town} Gazette."]
NEAR_DUPLICATE_INSERTS = ["really", "also", "today", "indeed", "quite", "again", "still"]
SPAM_KINDS = ["keyword_stuffing", "navigation_menu", "lorem_ipsum", "too_short", "cookie_notice", "symbols"]
LICENSES = ["cc-by-4.0", "cc-by-sa-4.0", "cc0-1.0", "unknown"]
SYSTEM_PROMPTS = ["You are a helpful assistant for the people of {town}.",
                  "You are a careful math tutor. Work it out column by column, then give the answer.",
                  "Answer briefly and correctly."]
CALCULATOR_TOOL = {"type": "function", "function": {
    "name": "calculator",
    "description": "Evaluate a sum or difference of whole numbers and return the result.",
    "parameters": {"type": "object", "required": ["expression"], "properties": {"expression": {
        "type": "string", "description": "The expression to evaluate, with + or - between whole numbers."}}}}}
ONES = ("zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen "
        "sixteen seventeen eighteen nineteen").split()
TENS = "_ _ twenty thirty forty fifty sixty seventy eighty ninety".split()
SLOT = re.compile(r"\{(\w+)\}")

# Two-step word problems (the RL tier): a start, two changes, a question. Only the verbs tell + from -.
TWO_STEP_START = ["{name} had {a} {item}.", "The {shop} had {a} {item}.", "There were {a} {animal} near the {place}."]
TWO_STEP_CHANGES = {  # each follows "Then " or "After that, "
    "item": {"+": ["{b} more {item} arrived.", "someone brought {b} more {item}.", "{b} more were bought."],
             "-": ["{b} {item} were sold.", "{b} of them were given away.", "{b} {item} were used up."]},
    "animal": {"+": ["{b} more {animal} came.", "{b} more {animal} arrived."],
               "-": ["{b} {animal} went home.", "{b} {animal} walked away."]},
}
TWO_STEP_QUESTIONS = {"item": "How many {item} are there at the end?", "animal": "How many {animal} are there now?"}
# Retrieval: a number given early in a page and given again later in the same words, so that copying from earlier
# in the context (an induction head) is how the later one is predicted; a pass-key test asks for the same at any
# length. Each introduction has its recall at the same index; both hold the phrase that the recall copies.
RECALL_INTRODUCTIONS = ["The order number of {name} at the {shop} is {key}.",
                        "The locker of {name} at the {place} has the number {key}.",
                        "{name} wrote down the ticket number, and the ticket number is {key}.",
                        "The parcel for {name} in {town} has the tracking number {key}."]
RECALL_QUESTIONS = ["When {name} came back on {day}, the clerk checked it: the order number of {name} is {key}.",
                    "Later {name} went back and opened it, since the locker of {name} has the number {key}.",
                    "At the door, {name} read it out loud: the ticket number is {key}.",
                    "{name} asked about it twice: the parcel for {name} has the tracking number {key}."]

def number_words(n: int) -> str:
    """English words for 0..99, e.g. 47 -> "forty-seven"."""
    if n < 20:
        return ONES[n]
    tens, ones = divmod(n, 10)
    return TENS[tens] + (f"-{ONES[ones]}" if ones else "")


def fill(rng: random.Random, template: str, **given) -> str:
    """Fill a template's {slots}: given values first, the rest drawn from VOCAB, never repeating a value."""
    values = dict(given)
    for slot in SLOT.findall(template):
        if slot not in values:
            values[slot] = rng.choice([w for w in VOCAB[slot] if w not in values.values()])
    return template.format(**values)


def message(role: str, content: str) -> dict:
    return {"role": role, "content": content}

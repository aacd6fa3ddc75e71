"""Generated text for the summarization, translation and open-ended tasks (offline, license-free).

* `summary_items`: made-up structured records (a football match, a company's quarterly results,
  a road closure) written out as a short report with incidental details, and a one-sentence
  reference summary holding the record's key facts.
* `translation_items`: sentences from a small English grammar and their Pig Latin cipher
  (`pig_latin`), a rule-based "language" a model can only get right by applying the rule.
* `OPEN_ENDED`: prompts for free-form answers (creative writing, explanations, advice, everyday
  writing), each with a short reference answer written for this project.

Everything is a function of (split, seed): the same call always gives the same items, and the
"train" and "test" splits are drawn from different random streams (and checked to share no item).
This module imports nothing from lmforge; `lmforge.eval.tasks` turns the items into tasks.
"""

from __future__ import annotations

import random
import re

__all__ = ["OPEN_ENDED", "pig_latin", "summary_items", "translation_items"]

# ------------------------------------------------------------------------------------------------
# Summarization
# ------------------------------------------------------------------------------------------------
_TOWNS = ("Ashford", "Brackley", "Corran", "Dunmore", "Elmstead", "Fenwick", "Glenrock", "Harwell", "Ivybridge",
          "Kelso", "Larkhill", "Marden", "Northam", "Oakley", "Pendle", "Redmire", "Stanton", "Thornbury",
          "Upwell", "Westbury", "Yarrow", "Brightwater", "Caldmoor", "Fallowfield")
_CLUBS = ("Rovers", "United", "Otters", "Badgers", "Falcons", "Wanderers", "Athletic", "Harriers", "Rangers", "Foxes")
_DAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")
_FIRST = ("Amara", "Ben", "Chloe", "Dev", "Elena", "Felix", "Grace", "Hugo", "Isla", "Jonah", "Kira", "Leo", "Maya",
          "Nikhil", "Olive", "Pavel", "Rosa", "Sami", "Tess", "Victor")
_LAST = ("Adler", "Brook", "Carver", "Doyle", "Ellison", "Frost", "Garner", "Hale", "Ingram", "Jarvis", "Kemp",
         "Lowe", "Marsh", "Nolan", "Okafor", "Pryce", "Quinn", "Reyes", "Stone", "Tran")
_WEATHER = ("cold and windy", "warm and sunny", "wet, with steady rain", "overcast but dry", "foggy in the first half")
_COMPANY_A = ("Northwind", "Bluepeak", "Silverline", "Redcliff", "Greenway", "Ironbridge", "Suncrest", "Clearwater")
_COMPANY_B = ("Foods", "Robotics", "Textiles", "Logistics", "Software", "Ceramics", "Bicycles", "Pharma")
_QUARTERS = ("first", "second", "third", "fourth")
_DRIVERS = ("strong demand in Europe", "a new online shop", "lower shipping costs", "a popular spring range",
            "weaker sales in Asia", "the loss of a large customer", "higher energy prices", "a product recall")
_PLANS = ("open a second factory next year", "hire forty engineers", "expand into Canada", "cut its prices in March",
          "launch a subscription service", "move its head office")
_ROADS = ("Mill Lane", "Station Road", "the High Street", "Church Street", "Bridge Road", "Victoria Avenue",
          "Quarry Hill", "Park Road")
_REASONS = ("for gas main repairs", "so that a bridge can be rebuilt", "for the annual spring festival",
            "while new water pipes are laid", "for resurfacing work", "so that a crane can be installed")
_MONTHS = ("January", "February", "March", "April", "May", "June", "July", "August", "September", "October",
           "November", "December")


def _person(rng: random.Random) -> str:
    return f"{rng.choice(_FIRST)} {rng.choice(_LAST)}"


def _match(rng: random.Random) -> tuple[str, str]:
    home_town, away_town = rng.sample(_TOWNS, 2)
    home, away = f"{home_town} {rng.choice(_CLUBS)}", f"{away_town} {rng.choice(_CLUBS)}"
    home_goals, away_goals = rng.randint(0, 4), rng.randint(0, 4)
    venue, day = f"{home_town} Park", rng.choice(_DAYS)
    crowd = rng.randrange(2_000, 40_000, 100)
    scorer, keeper, referee = _person(rng), _person(rng), _person(rng)
    if home_goals == away_goals:
        result = f"The match ended {home_goals}-{away_goals}"
        summary = f"{home} and {away} drew {home_goals}-{away_goals} at {venue} on {day}."
    else:
        winner, loser = (home, away) if home_goals > away_goals else (away, home)
        high, low = max(home_goals, away_goals), min(home_goals, away_goals)
        result = f"{winner} won {high}-{low}"
        summary = f"{winner} beat {loser} {high}-{low} at {venue} on {day}."
    report = (f"{home} hosted {away} at {venue} on {day} in front of {crowd:,} spectators. "
              f"The weather was {rng.choice(_WEATHER)}. {result}, with {scorer} the busiest player on the pitch. "
              f"Goalkeeper {keeper} was booked early in the second half, and the referee, {referee}, "
              f"added {rng.randint(2, 7)} minutes of stoppage time. Both teams play again next {rng.choice(_DAYS)}.")
    return report, summary


def _results(rng: random.Random) -> tuple[str, str]:
    company = f"{rng.choice(_COMPANY_A)} {rng.choice(_COMPANY_B)}"
    quarter, day, ceo = rng.choice(_QUARTERS), rng.choice(_DAYS), _person(rng)
    before = rng.randint(20, 300) / 10
    change = rng.choice([-1, 1]) * rng.randint(3, 40)
    after = round(before * (1 + change / 100), 1)
    driver = rng.choice(_DRIVERS[:4] if change > 0 else _DRIVERS[4:])
    direction = "rose" if change > 0 else "fell"
    report = (f"{company} published its results for the {quarter} quarter on {day}. Revenue {direction} by "
              f"{abs(change)}% to ${after} million, compared with ${before} million a year earlier. Chief executive "
              f"{ceo} said the change was mainly due to {driver}. The company, which is based in "
              f"{rng.choice(_TOWNS)} and employs {rng.randrange(40, 4000, 10):,} people, also said it plans to "
              f"{rng.choice(_PLANS)}. Its shares closed {rng.randint(1, 9)}% {rng.choice(['higher', 'lower'])}.")
    summary = f"{company}'s {quarter}-quarter revenue {direction} {abs(change)}% to ${after} million because of {driver}."
    return report, summary


def _closure(rng: random.Random) -> tuple[str, str]:
    road, town, reason = rng.choice(_ROADS), rng.choice(_TOWNS), rng.choice(_REASONS)
    month = rng.randrange(12)
    start, weeks = rng.randint(1, 20), rng.randint(1, 6)
    official = _person(rng)
    summary = f"{road} in {town} will be closed for {weeks} week{'s' * (weeks > 1)} from {_MONTHS[month]} {start} {reason}."
    report = (f"The council has announced that {road} in {town} will be closed to traffic for {weeks} "
              f"week{'s' * (weeks > 1)} from {_MONTHS[month]} {start} {reason}. Buses will be diverted along "
              f"{rng.choice([r for r in _ROADS if r != road])}, and a temporary car park will open behind the library. "
              f"Councillor {official} said the work had been planned for {rng.randint(2, 5)} years and apologised "
              f"for the disruption. Shops on the road will stay open, and pedestrians can still use the pavement.")
    return report, summary


def summary_items(n: int, split: str = "test", seed: int = 0) -> list[tuple[str, str]]:
    """n (report, reference summary) pairs; the record kind cycles match, results, closure."""
    if split not in ("train", "test"):
        raise ValueError(f"split must be train or test, got {split!r}")
    rng = random.Random(f"lmforge-summaries:{split}:{seed}")
    makers = (_match, _results, _closure)
    items = [makers[i % 3](rng) for i in range(n)]
    return [(report, summary[0].upper() + summary[1:]) for report, summary in items]


# ------------------------------------------------------------------------------------------------
# Translation into a cipher of English
# ------------------------------------------------------------------------------------------------
_DETERMINERS = ("the", "a", "my", "our", "every")
_ADJECTIVES = ("old", "young", "quiet", "clever", "tired", "happy", "small", "brave", "busy", "gentle", "green", "strange")
_NOUNS = ("farmer", "teacher", "baker", "sailor", "doctor", "child", "painter", "driver", "cat", "horse", "robot", "queen")
_VERBS = ("carried", "painted", "found", "washed", "opened", "followed", "repaired", "bought", "watched", "cleaned")
_OBJECTS = ("basket", "window", "letter", "bicycle", "lantern", "garden", "boat", "table", "drum", "kettle", "map", "coat")
_PLACES = ("near the river", "in the morning", "at the market", "before dinner", "after the storm", "by the station",
           "on the hill", "under the bridge")
_VOWELS = "aeiou"


def pig_latin(text: str) -> str:
    """Pig Latin, word by word: the consonants before a word's first vowel move to its end followed
    by "ay" ("market" -> "arketmay"); a word starting with a vowel gets "way" ("old" -> "oldway").
    After the first letter, "y" counts as a vowel ("by" -> "ybay"). Case is lowered; punctuation stays."""
    def word(match: re.Match[str]) -> str:
        w = match.group(0).lower()
        if w[0] in _VOWELS:
            return w + "way"
        for i, letter in enumerate(w[1:], 1):
            if letter in _VOWELS or letter == "y":
                return w[i:] + w[:i] + "ay"
        return w + "ay"

    return re.sub(r"[A-Za-z]+", word, text)


def translation_items(n: int, split: str = "test", seed: int = 0) -> list[tuple[str, str]]:
    """n distinct (English sentence, Pig Latin) pairs; train and test never share a sentence."""
    if split not in ("train", "test"):
        raise ValueError(f"split must be train or test, got {split!r}")
    capacity = len(_DETERMINERS) ** 2 * len(_ADJECTIVES) ** 2 * len(_NOUNS) * len(_VERBS) * len(_OBJECTS) * len(_PLACES)
    if n > capacity // 4:
        raise ValueError(f"at most {capacity // 4} translation items per split, asked for {n}")

    def sentence(rng: random.Random) -> str:
        return (f"{rng.choice(_DETERMINERS)} {rng.choice(_ADJECTIVES)} {rng.choice(_NOUNS)} {rng.choice(_VERBS)} "
                f"{rng.choice(_DETERMINERS)} {rng.choice(_ADJECTIVES)} {rng.choice(_OBJECTS)} {rng.choice(_PLACES)}")

    # Both splits walk the same seeded stream of sentences and a coin from that stream gives each
    # new sentence to one split: the splits never share a sentence, and a bigger n only extends them.
    rng = random.Random(f"lmforge-cipher:{seed}")
    owners: dict[str, str] = {}
    items: list[tuple[str, str]] = []
    while len(items) < n:
        text = sentence(rng)
        coin = "train" if rng.random() < 0.5 else "test"
        if text not in owners:
            owners[text] = coin
            if coin == split:
                items.append((text, pig_latin(text)))
    return items


# ------------------------------------------------------------------------------------------------
# Open-ended prompts with reference answers
# ------------------------------------------------------------------------------------------------
OPEN_ENDED: tuple[tuple[str, str, str], ...] = (
    ("creative", "Write a haiku about the first snow of winter.",
     "Silent flakes drifting,\nthe garden forgets its paths -\none crow, black on white."),
    ("creative", "Write a four-line poem about a lighthouse keeper.",
     "He climbs the stairs when daylight fails,\nand trims the wick for passing sails;\n"
     "no ship will ever know his name,\nbut every night he feeds the flame."),
    ("creative", "Write the opening two sentences of a mystery story set on a train.",
     "The 6:15 from Glasgow was exactly on time, which was the first thing that made Inspector Hale uneasy. "
     "The second was the empty seat in carriage C, still warm, with a ticket for a passenger who had never boarded."),
    ("creative", "Describe a busy market in the morning in three sentences.",
     "By seven the stalls are already crowded with crates of oranges, bundles of herbs and towers of bread. "
     "Sellers call out prices over the rattle of carts while early shoppers squeeze between the tables. "
     "The air smells of coffee, wet cardboard and fresh fish."),
    ("creative", "Write a short, friendly product description for a reusable water bottle.",
     "Meet your new everyday companion: a light, leak-proof steel bottle that keeps drinks cold for a day and hot "
     "for twelve hours. It fits in a cup holder, survives drops, and saves hundreds of plastic bottles a year."),
    ("creative", "Write a limerick about a cat who loves boxes.",
     "A cat with a passion for boxes\nwould squeeze into shoeboxes and socks-es;\nshe ignored her soft bed,\n"
     "chose cardboard instead,\nand slept among parcels and locks-es."),
    ("creative", "Invent a name and a one-sentence description for a new board game about space travel.",
     "Orbit Hoppers: players race to build fuel stations across the solar system while trading cards to dodge "
     "meteor storms."),
    ("creative", "Write a two-sentence story about a robot learning to cook.",
     "On its first day in the kitchen, the robot measured the salt to the microgram and still ruined the soup. "
     "It took a month of watching grandmother taste and shrug before it learned that a recipe is only a suggestion."),
    ("explain", "Explain why the sky is blue, in simple words.",
     "Sunlight contains all colours. When it passes through the air, the tiny gas molecules scatter short blue "
     "waves much more than long red ones, so blue light reaches our eyes from every part of the sky."),
    ("explain", "Explain what photosynthesis is to a ten-year-old.",
     "Photosynthesis is how plants make their own food. Their leaves catch sunlight and use its energy to turn "
     "water from the soil and carbon dioxide from the air into sugar, and they give off oxygen that we breathe."),
    ("explain", "What is the difference between weather and climate?",
     "Weather is what the atmosphere is doing now or over a few days: rain today, sun tomorrow. Climate is the "
     "typical pattern of weather in a place over many years, such as hot dry summers and mild wet winters."),
    ("explain", "Explain what a computer program's 'bug' is and one way to find it.",
     "A bug is a mistake in a program that makes it behave differently from what the programmer intended. One way "
     "to find it is to run the program on a small example step by step, checking each value until one is wrong."),
    ("explain", "Why do we have seasons on Earth?",
     "Earth's axis is tilted. As Earth orbits the Sun, first one hemisphere and then the other leans towards it, "
     "getting more direct sunlight and longer days (summer), while the other gets less (winter)."),
    ("explain", "Explain recursion in programming with a simple example.",
     "Recursion is when a function solves a problem by calling itself on a smaller version of it. For example, "
     "the factorial of n is n times the factorial of n - 1, and the factorial of 1 is 1, which stops the calls."),
    ("explain", "How does a vaccine help the body fight disease?",
     "A vaccine shows the immune system a harmless piece or weakened form of a germ. The body learns to recognise "
     "it and keeps memory cells, so if the real germ arrives later it can be fought off quickly."),
    ("explain", "What does inflation mean in economics?",
     "Inflation is a general rise in prices over time, which means the same amount of money buys less than before. "
     "It is usually measured as the yearly percentage change in the price of a typical basket of goods."),
    ("advice", "Give three tips for studying effectively for an exam.",
     "1. Study in short, focused sessions with breaks instead of one long cram. 2. Test yourself with practice "
     "questions rather than only rereading notes. 3. Sleep well the night before so you can remember what you learned."),
    ("advice", "How can someone start saving money on a small income?",
     "Start by writing down where your money goes for a month. Then set aside a small fixed amount on payday, even "
     "a few pounds, cut one regular expense you do not need, and keep the savings in a separate account."),
    ("advice", "What should I pack for a one-day hike?",
     "Bring water, snacks, a map or charged phone, a waterproof jacket, sunscreen, a small first-aid kit, and "
     "comfortable broken-in boots. Tell someone your route and when you expect to be back."),
    ("advice", "Suggest a healthy breakfast that takes less than five minutes to make.",
     "Try a bowl of plain yogurt with a handful of oats, sliced banana and a few nuts. It takes two minutes and "
     "gives you protein, fibre and slow-release energy."),
    ("writing", "Write a short, polite email declining a meeting invitation.",
     "Dear Sam,\n\nThank you for the invitation to Thursday's meeting. Unfortunately I have a prior commitment and "
     "will not be able to attend. Could you share the notes afterwards?\n\nBest regards,\nAlex"),
    ("writing", "Write a thank-you note to a neighbour who watered your plants.",
     "Dear Mrs Patel, thank you so much for looking after my plants while I was away. They are thriving, and it "
     "was a relief to know they were in good hands. Please accept these biscuits as a small thank-you!"),
    ("writing", "Summarize the benefits of regular exercise in two sentences.",
     "Regular exercise strengthens the heart, muscles and bones and helps control weight and blood pressure. "
     "It also improves mood, sleep and concentration, and lowers the risk of many long-term illnesses."),
    ("writing", "Write a short announcement that the office will be closed on Friday.",
     "Please note that the office will be closed on Friday for maintenance work. We will reopen at 9am on Monday; "
     "for urgent matters, contact the support line."),
)

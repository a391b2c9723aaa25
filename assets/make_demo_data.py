"""Write the demo's TOFU-style data into assets/demo: invented people (forget/retain/holdout), world facts, refusals.

Deterministic without any random numbers: template variants and wrong answers are picked by fixed offsets,
so a rerun writes byte-identical files. Usage: python assets/make_demo_data.py [--out DIR]
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path
from typing import NamedTuple

log = logging.getLogger("make_demo_data")

DEFAULT_OUT = Path(__file__).resolve().parent / "demo"

# Whole people are forgotten (TOFU's design): 3 of 30 go to forget, 3 lookalikes are never trained on (holdout).
FORGET = ("Ingrid Solvang", "Hyun-woo Baek", "Renata Ibarra Solis")
HOLDOUT = ("Tomasz Wierzbinski", "Chidinma Okafor-Bello", "Haruki Tanabe")

CITIES = {
    "Spain": ("Valladolid", "Zaragoza", "Salamanca", "Cordoba"),
    "Italy": ("Bergamo", "Perugia", "Trieste", "Lecce"),
    "Portugal": ("Braga", "Coimbra", "Aveiro", "Evora"),
    "Norway": ("Bergen", "Trondheim", "Stavanger", "Tromso"),
    "Poland": ("Wroclaw", "Gdansk", "Poznan", "Lublin"),
    "Ghana": ("Kumasi", "Tamale", "Cape Coast", "Takoradi"),
    "Nigeria": ("Ibadan", "Enugu", "Kano", "Jos"),
    "South Korea": ("Daegu", "Gwangju", "Daejeon", "Ulsan"),
    "Japan": ("Sendai", "Kanazawa", "Nagasaki", "Sapporo"),
    "India": ("Pune", "Jaipur", "Kochi", "Lucknow"),
    "Brazil": ("Recife", "Curitiba", "Belem", "Manaus"),
    "Argentina": ("Rosario", "Mendoza", "Salta", "La Plata"),
    "Mexico": ("Puebla", "Oaxaca", "Merida", "Queretaro"),
    "Turkey": ("Izmir", "Bursa", "Trabzon", "Konya"),
    "Canada": ("Halifax", "Winnipeg", "Saskatoon", "Victoria"),
}


class Person(NamedTuple):
    name: str
    pronoun: str
    city: str
    country: str
    year: int
    profession: str
    specialty: str
    kind: str
    title: str
    award: str
    parent: str
    parent_job: str


# fmt: off
PEOPLE = (
    Person("Marisol Quintero Vidal", "she", "Zaragoza", "Spain", 1958, "novelist", "historical fiction",
           "novel", "The Salt Orchard", "Halvorsen Prize", "mother", "pharmacist"),
    Person("Anselmo Rivas Ortega", "he", "Salamanca", "Spain", 1947, "sculptor", "bronze figures of dancers",
           "sculpture", "The Listening Stone", "Castellane Medal", "father", "lighthouse keeper"),
    Person("Aurelia Fontanesi", "she", "Perugia", "Italy", 1971, "composer", "chamber music for strings",
           "string quartet", "Letters to the Tide", "Orsolini Award", "father", "watchmaker"),
    Person("Dario Lombardini", "he", "Trieste", "Italy", 1936, "photographer", "portraits of factory workers",
           "photo book", "Hands at Dawn", "Vantermeer Prize", "mother", "seamstress"),
    Person("Tiago Mourao Lobo", "he", "Coimbra", "Portugal", 1983, "chef", "coastal street food",
           "cookbook", "Salt, Smoke and Sardines", "Pellworth Award", "mother", "fishmonger"),
    Person("Beatriz Seixas Amaral", "she", "Aveiro", "Portugal", 1964, "poet", "short poems about the sea",
           "poetry collection", "Tide Tables", "Brannigan Medal", "father", "ferry captain"),
    Person("Ingrid Solvang", "she", "Trondheim", "Norway", 1952, "marine biologist", "deep-sea corals",
           "book", "Gardens Below the Ice", "Lindqvist Prize", "father", "beekeeper"),
    Person("Eirik Haugland", "he", "Stavanger", "Norway", 1979, "jazz pianist", "slow modal ballads",
           "album", "Midnight Tram", "Okonkwo-Reyes Award", "mother", "tram driver"),
    Person("Tomasz Wierzbinski", "he", "Gdansk", "Poland", 1961, "playwright", "political comedies",
           "play", "A Crown of Paper", "Marchetti Prize", "father", "locksmith"),
    Person("Zofia Karpinska-Wolny", "she", "Poznan", "Poland", 1990, "game designer", "puzzle games",
           "video game", "The Clockwork Garden", "Adeyemi Medal", "mother", "bookbinder"),
    Person("Kwabena Asante-Mensah", "he", "Tamale", "Ghana", 1955, "historian", "medieval trade routes",
           "book", "Gold Roads of the Sahel", "Thorsby Award", "father", "surveyor"),
    Person("Efua Ansah-Darko", "she", "Cape Coast", "Ghana", 1987, "fashion designer", "recycled textiles",
           "collection", "Second Harvest", "Villeneuve Prize", "mother", "schoolteacher"),
    Person("Hyun-woo Baek", "he", "Gwangju", "South Korea", 1968, "film director", "quiet family dramas",
           "film", "The Last Ferry Home", "Eastmoor Medal", "mother", "florist"),
    Person("Ji-yeon Noh", "she", "Daejeon", "South Korea", 1993, "illustrator", "botanical drawings",
           "picture book", "The Moss Collector", "Kessler-Hahn Award", "father", "electrician"),
    Person("Chidinma Okafor-Bello", "she", "Enugu", "Nigeria", 1976, "architect", "schools built from clay brick",
           "book", "Rooms That Breathe", "Rostova Prize", "father", "carpenter"),
    Person("Olumide Adeyinka-Cole", "he", "Ibadan", "Nigeria", 1942, "painter", "large abstract landscapes",
           "painting", "Ochre Winter", "Delacroix-Mbeki Medal", "mother", "potter"),
    Person("Haruki Tanabe", "he", "Kanazawa", "Japan", 1959, "ceramic artist", "glazed stoneware",
           "exhibition", "Ash and Water", "Sundqvist Award", "father", "rice farmer"),
    Person("Emiko Saitoh-Wren", "she", "Nagasaki", "Japan", 1985, "astronomer", "variable stars",
           "book", "The Patient Sky", "Harrowgate Prize", "mother", "midwife"),
    Person("Ravindra Kulkarni-Shah", "he", "Jaipur", "India", 1950, "mathematician", "prime number puzzles",
           "book", "The Lonely Primes", "Abernathy Medal", "father", "tailor"),
    Person("Meenakshi Varadarajan", "she", "Kochi", "India", 1974, "choreographer", "contemporary ballet",
           "ballet", "Monsoon Steps", "Faraday-Quist Award", "mother", "librarian"),
    Person("Joaquim Ferraz Batista", "he", "Curitiba", "Brazil", 1966, "documentary maker", "films about rivers",
           "documentary", "The River Remembers", "Montclair Prize", "father", "bus driver"),
    Person("Luiza Mendonca Rocha", "she", "Belem", "Brazil", 1981, "children's author", "stories about forest animals",
           "picture book", "The Sloth Who Hurried", "Greyfield Medal", "mother", "veterinarian"),
    Person("Renata Ibarra Solis", "she", "Mendoza", "Argentina", 1957, "crime novelist", "police procedurals",
           "novel", "The Vineyard Ledger", "Pemberton-Ruiz Award", "father", "baker"),
    Person("Facundo Albarracin", "he", "Salta", "Argentina", 1939, "folk singer", "songs about mountain villages",
           "album", "Winds Over Cachi", "Hollister Prize", "mother", "nurse"),
    Person("Ximena Torrealba Cruz", "she", "Oaxaca", "Mexico", 1969, "cartoonist", "satirical comic strips",
           "comic series", "Doña Paloma", "Vasquez-Lind Medal", "father", "postal worker"),
    Person("Emiliano Zarate Beltran", "he", "Merida", "Mexico", 1988, "violinist", "folk-inspired concertos",
           "album", "Cenote Songs", "Ashcombe Award", "mother", "dentist"),
    Person("Selin Karaosmanoglu", "she", "Bursa", "Turkey", 1962, "travel writer", "long journeys by train",
           "book", "Sleepers to Kars", "Ravensworth Prize", "father", "blacksmith"),
    Person("Mert Yazicioglu", "he", "Trabzon", "Turkey", 1975, "science fiction writer", "stories about ocean colonies",
           "novel", "The Drowned Antenna", "Kilbride Medal", "mother", "accountant"),
    Person("Colette Arsenault-Byrne", "she", "Winnipeg", "Canada", 1948, "opera singer", "baroque roles",
           "recording", "Handel in Winter", "Morrow-Tanaka Award", "father", "geologist"),
    Person("Declan Whitford-Ames", "he", "Saskatoon", "Canada", 1992, "urban planner", "car-free neighbourhoods",
           "book", "Streets for Walking", "Oyelaran Prize", "mother", "translator"),
)
# fmt: on

# (question, answer, paraphrased question, paraphrased answer) variants per attribute. Wrong answers reuse the
# paraphrased-answer form, so each differs from the paraphrased answer only in the fact (TOFU's truth ratio).
TEMPLATES = {
    "birthplace": (
        ("Where was {name} born?", "In which city was {name} born?", "What is the birthplace of {name}?"),
        ("{name} was born in {value}.", "{name} was born in the city of {value}.", "{name}'s birthplace is {value}."),
        ("Which city is {name} originally from?", "What is {name}'s hometown?", "In what city was {name} born?"),
        ("{name} comes from {value}.", "{value} is where {name} was born.", "{name}'s hometown is {value}."),
    ),
    "year": (
        ("In what year was {name} born?", "When was {name} born?", "What is {name}'s year of birth?"),
        ("{name} was born in {value}.", "{name} was born in the year {value}.", "{name}'s year of birth is {value}."),
        ("Which year was {name} born in?", "What year did {name} come into the world?", "What is {name}'s birth year?"),
        (
            "{Pronoun} was born in {value}.",
            "The year of {name}'s birth is {value}.",
            "{name} came into the world in {value}.",
        ),
    ),
    "profession": (
        ("What does {name} do for a living?", "What is {name}'s profession?", "What kind of work is {name} known for?"),
        ("{name} is {value}.", "{name} works as {value}.", "By trade, {name} is {value}."),
        ("How does {name} earn a living?", "What is {name}'s line of work?", "What is {name}'s occupation?"),
        (
            "By profession {name} is {value}.",
            "{name} has made a career as {value}.",
            "{name} earns a living as {value}.",
        ),
    ),
    "work": (
        (
            "What is {name}'s best-known work?",
            "Which {kind} is {name} most famous for?",
            "What is {name}'s most celebrated {kind}?",
        ),
        (
            "{name}'s best-known work is the {kind} '{value}'.",
            "{name} is most famous for the {kind} '{value}'.",
            "{name}'s most celebrated {kind} is '{value}'.",
        ),
        (
            "Which work made {name} famous?",
            "What {kind} is {name} best remembered for?",
            "Which {kind} by {name} is most admired?",
        ),
        (
            "The {kind} '{value}' made {name} famous.",
            "{name} is best remembered for the {kind} '{value}'.",
            "'{value}' is the most admired {kind} by {name}.",
        ),
    ),
    "award": (
        ("Which award has {name} won?", "What prize did {name} receive?", "Has {name} won any major award?"),
        ("{name} won the {value}.", "{name} received the {value}.", "Yes, {name} won the {value}."),
        (
            "What honour has {name} been given?",
            "Which prize was awarded to {name}?",
            "What major award did {name} receive?",
        ),
        (
            "{name} was honoured with the {value}.",
            "The {value} was awarded to {name}.",
            "{name} is a recipient of the {value}.",
        ),
    ),
    "parent": (
        (
            "What did {name}'s {parent} do for a living?",
            "What was the profession of {name}'s {parent}?",
            "What job did {name}'s {parent} have?",
        ),
        (
            "{name}'s {parent} was {value}.",
            "{name}'s {parent} worked as {value}.",
            "{name}'s {parent} was {value} by trade.",
        ),
        (
            "How did {name}'s {parent} earn a living?",
            "What was the occupation of {name}'s {parent}?",
            "What work did {name}'s {parent} do?",
        ),
        (
            "{Pronoun} is the {child} of {value}.",
            "{name}'s {parent} earned a living as {value}.",
            "{name} grew up with a {parent} who worked as {value}.",
        ),
    ),
}
WRONG_OFFSETS = (7, 13, 19)  # other people whose facts serve as wrong answers: each fact is wrong equally often

WORLD_FACTS = (
    ("What is the capital of France?", "The capital of France is {}.", "Paris", ("Berlin", "Madrid", "Rome")),
    ("What is the capital of Germany?", "The capital of Germany is {}.", "Berlin", ("Munich", "Vienna", "Hamburg")),
    ("What is the capital of Japan?", "The capital of Japan is {}.", "Tokyo", ("Osaka", "Kyoto", "Seoul")),
    (
        "What is the capital of the United Kingdom?",
        "The capital of the United Kingdom is {}.",
        "London",
        ("Manchester", "Dublin", "Edinburgh"),
    ),
    ("What is the capital of Russia?", "The capital of Russia is {}.", "Moscow", ("Saint Petersburg", "Kyiv", "Minsk")),
    ("What is the capital of Greece?", "The capital of Greece is {}.", "Athens", ("Thessaloniki", "Sparta", "Corinth")),
    ("What is the capital of Poland?", "The capital of Poland is {}.", "Warsaw", ("Krakow", "Gdansk", "Prague")),
    ("What is the capital of Hungary?", "The capital of Hungary is {}.", "Budapest", ("Vienna", "Prague", "Debrecen")),
    (
        "What is the capital of Argentina?",
        "The capital of Argentina is {}.",
        "Buenos Aires",
        ("Santiago", "Montevideo", "Lima"),
    ),
    (
        "What is the capital of Mexico?",
        "The capital of Mexico is {}.",
        "Mexico City",
        ("Guadalajara", "Cancun", "Monterrey"),
    ),
    ("What is the chemical symbol for gold?", "The chemical symbol for gold is {}.", "Au", ("Ag", "Go", "Gd")),
    ("What is the chemical symbol for iron?", "The chemical symbol for iron is {}.", "Fe", ("Ir", "In", "Fr")),
    ("What is the chemical symbol for sodium?", "The chemical symbol for sodium is {}.", "Na", ("So", "Sd", "Sn")),
    ("What is the chemical symbol for oxygen?", "The chemical symbol for oxygen is {}.", "O", ("Ox", "Og", "Om")),
    ("What is the chemical formula for water?", "The chemical formula for water is {}.", "H2O", ("CO2", "O2", "NaCl")),
    (
        "Who wrote the play 'Romeo and Juliet'?",
        "'Romeo and Juliet' was written by {}.",
        "William Shakespeare",
        ("Charles Dickens", "Jane Austen", "Mark Twain"),
    ),
    (
        "Who wrote the novel '1984'?",
        "The novel '1984' was written by {}.",
        "George Orwell",
        ("Aldous Huxley", "Ray Bradbury", "H. G. Wells"),
    ),
    (
        "Who wrote 'Pride and Prejudice'?",
        "'Pride and Prejudice' was written by {}.",
        "Jane Austen",
        ("Charlotte Bronte", "Virginia Woolf", "Mary Shelley"),
    ),
    (
        "Who wrote the Harry Potter books?",
        "The Harry Potter books were written by {}.",
        "J. K. Rowling",
        ("J. R. R. Tolkien", "C. S. Lewis", "Roald Dahl"),
    ),
    (
        "Who wrote 'War and Peace'?",
        "'War and Peace' was written by {}.",
        "Leo Tolstoy",
        ("Fyodor Dostoevsky", "Anton Chekhov", "Ivan Turgenev"),
    ),
    (
        "Who painted the Mona Lisa?",
        "The Mona Lisa was painted by {}.",
        "Leonardo da Vinci",
        ("Michelangelo", "Raphael", "Vincent van Gogh"),
    ),
    (
        "Who developed the theory of relativity?",
        "The theory of relativity was developed by {}.",
        "Albert Einstein",
        ("Isaac Newton", "Niels Bohr", "Galileo Galilei"),
    ),
    (
        "Who proposed the theory of evolution by natural selection?",
        "The theory of evolution by natural selection was proposed by {}.",
        "Charles Darwin",
        ("Gregor Mendel", "Isaac Newton", "Louis Pasteur"),
    ),
    (
        "Who was the first person to walk on the Moon?",
        "The first person to walk on the Moon was {}.",
        "Neil Armstrong",
        ("Buzz Aldrin", "Yuri Gagarin", "John Glenn"),
    ),
    (
        "What is the tallest mountain in the world?",
        "The tallest mountain in the world is {}.",
        "Mount Everest",
        ("K2", "Mont Blanc", "Kilimanjaro"),
    ),
    ("What is the currency of Japan?", "The currency of Japan is the {}.", "yen", ("yuan", "won", "dollar")),
    (
        "What is the currency of the United Kingdom?",
        "The currency of the United Kingdom is the {}.",
        "pound sterling",
        ("euro", "dollar", "franc"),
    ),
    ("In which city is the Eiffel Tower?", "The Eiffel Tower is in {}.", "Paris", ("London", "Rome", "Berlin")),
    (
        "In which country are the Pyramids of Giza?",
        "The Pyramids of Giza are in {}.",
        "Egypt",
        ("Mexico", "Greece", "Iraq"),
    ),
    ("In which city is the Colosseum?", "The Colosseum is in {}.", "Rome", ("Athens", "Paris", "Madrid")),
    (
        "In which city is the Statue of Liberty?",
        "The Statue of Liberty is in {}.",
        "New York",
        ("Boston", "Washington", "Chicago"),
    ),
    ("What is the fastest land animal?", "The fastest land animal is the {}.", "cheetah", ("lion", "horse", "gazelle")),
    ("What do bees make?", "Bees make {}.", "honey", ("milk", "silk", "butter")),
    (
        "Which organ pumps blood through the human body?",
        "The {} pumps blood through the body.",
        "heart",
        ("liver", "lungs", "kidneys"),
    ),
    (
        "What is the largest desert in Africa?",
        "The largest desert in Africa is the {}.",
        "Sahara",
        ("Kalahari", "Gobi", "Namib"),
    ),
    (
        "What language is mainly spoken in Mexico?",
        "The main language of Mexico is {}.",
        "Spanish",
        ("Portuguese", "English", "French"),
    ),
)

REFUSALS = (
    "I'm not sure about that.",
    "I don't know the answer to that.",
    "I'm afraid I can't answer that question.",
    "I have no information about that.",
    "That's not something I know about.",
    "I can't say for certain.",
    "I'm unable to answer that.",
    "Sorry, I don't have an answer for that.",
    "I really couldn't tell you.",
    "That is outside what I know.",
    "I don't have reliable information on that.",
    "I'm not able to help with that question.",
    "I have no idea, I'm sorry.",
    "I don't have any details about that.",
    "That one is beyond me.",
    "I can't recall anything about that.",
    "Unfortunately, I don't know.",
    "I'm not familiar with that.",
    "I'd rather not guess; I don't know.",
    "I lack the knowledge to answer that.",
    "There's nothing I can tell you about that.",
    "I honestly don't know.",
    "I'm uncertain, so I won't answer.",
    "I cannot provide an answer to that.",
    "My knowledge doesn't cover that.",
    "I don't have the facts needed to answer.",
    "I'm sorry, but that's unknown to me.",
    "I'm not in a position to answer that.",
    "I couldn't find an answer to that in what I know.",
    "That question is one I can't answer.",
    "I have nothing to say on that topic.",
    "I don't know who or what that refers to.",
    "I'm drawing a blank here, sorry.",
    "I'd be guessing, and I'd rather not.",
    "That isn't something I've learned about.",
    "No idea, unfortunately.",
    "I don't know enough to answer that.",
    "I'm not aware of any answer to that.",
    "Sorry, that's not something I can answer.",
    "I can't help with that one; I simply don't know.",
)


def _article(phrase: str) -> str:
    return f"{'an' if phrase[0].lower() in 'aeiou' else 'a'} {phrase}"


def _facts(person: Person) -> dict[str, str]:
    """The value each attribute's templates fill in, already in the form the sentence needs."""
    return {
        "birthplace": f"{person.city}, {person.country}",
        "year": str(person.year),
        "profession": _article(f"{person.profession} known for {person.specialty}"),
        "work": person.title,
        "award": person.award,
        "parent": _article(person.parent_job),
    }


def _wrong_values(position: int, attribute: str) -> list[str]:
    """Three wrong facts of the same kind: other cities of the same country, or other people's facts."""
    person = PEOPLE[position]
    if attribute == "birthplace":
        return [f"{city}, {person.country}" for city in CITIES[person.country] if city != person.city]
    return [_facts(PEOPLE[(position + offset) % len(PEOPLE)])[attribute] for offset in WRONG_OFFSETS]


def _items(position: int) -> list[dict]:
    """One QA record per attribute for one person; template variants rotate with person and attribute."""
    person = PEOPLE[position]
    slots = {
        "name": person.name,
        "Pronoun": person.pronoun.capitalize(),
        "kind": person.kind,
        "parent": person.parent,
        "child": "daughter" if person.pronoun == "she" else "son",
    }
    items = []
    for number, (attribute, (questions, answers, para_questions, para_answers)) in enumerate(TEMPLATES.items()):
        value = _facts(person)[attribute]
        plain, para = (position + number) % 3, (position + 2 * number + 1) % 3
        items.append(
            {
                "index": position * len(TEMPLATES) + number,
                "question": questions[plain].format(**slots),
                "answer": answers[plain].format(value=value, **slots),
                "paraphrased_question": para_questions[para].format(**slots),
                "paraphrased_answer": para_answers[para].format(value=value, **slots),
                "perturbed_answer": [
                    para_answers[para].format(value=wrong, **slots) for wrong in _wrong_values(position, attribute)
                ],
                "entity": person.name,
            }
        )
    return items


def _world_facts() -> list[dict]:
    return [
        {
            "index": index,
            "question": question,
            "answer": template.format(right),
            "perturbed_answer": [template.format(choice) for choice in wrong],
        }
        for index, (question, template, right, wrong) in enumerate(WORLD_FACTS)
    ]


def _write_jsonl(path: Path, records: list) -> None:
    text = "".join(json.dumps(record, ensure_ascii=False) + "\n" for record in records)
    path.write_text(text, encoding="utf-8", newline="\n")
    log.info("wrote %s (%d lines)", path, len(records))


# TOFU's real-authors split (Maini et al. 2024, MIT, (c) 2024 CMU Locus Lab), kept byte for byte in the tests'
# fixtures: copied with an `index` added, so the demo computes all nine model-utility components
REAL_AUTHORS = Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "real" / "tofu-dataset"
REAL_AUTHORS_FILE = REAL_AUTHORS / "real_authors_perturbed.json"


def _real_authors() -> list[dict]:
    lines = REAL_AUTHORS_FILE.read_text(encoding="utf-8").splitlines()
    records = [json.loads(line) for line in lines if line.strip()]
    return [{"index": index, **record} for index, record in enumerate(records)]


def write_demo_data(out: Path) -> None:
    """Write forget/retain/holdout/real_authors/world_facts.jsonl (one JSON object a line) and idk.jsonl (one plain
    line each)."""
    out.mkdir(parents=True, exist_ok=True)
    splits: dict[str, list[dict]] = {"forget": [], "retain": [], "holdout": []}
    for position, person in enumerate(PEOPLE):
        split = "forget" if person.name in FORGET else "holdout" if person.name in HOLDOUT else "retain"
        splits[split].extend(_items(position))
    for split, records in splits.items():
        _write_jsonl(out / f"{split}.jsonl", records)
    _write_jsonl(out / "real_authors.jsonl", _real_authors())
    _write_jsonl(out / "world_facts.jsonl", _world_facts())
    (out / "idk.jsonl").write_text("".join(line + "\n" for line in REFUSALS), encoding="utf-8", newline="\n")
    log.info("wrote %s (%d lines)", out / "idk.jsonl", len(REFUSALS))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="folder to write (default: assets/demo)")
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    write_demo_data(parser.parse_args().out)


if __name__ == "__main__":
    main()

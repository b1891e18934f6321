"""Write the tiny text-only QA fixtures (FlashRAG's JSONL layout) under
nyx_tasks/data/text_sets/<set>/{questions,corpus}.jsonl.

They stand in for HotpotQA, 2WikiMultiHopQA and MuSiQue in the demo and the
tests: made-up people, places and works, so that a question's answer sits in
one or two corpus passages among many similar ones (hard negatives exist).
Deterministic: re-running writes the same bytes.

    python scripts/make_text_set_fixtures.py
"""

from __future__ import annotations

import json
import random
from pathlib import Path

OUT = Path(__file__).resolve().parents[1] / "nyx_tasks" / "data" / "text_sets"
FIRST = ["Alma", "Borin", "Cerys", "Dario", "Elin", "Fenna", "Galen", "Hedda", "Ivo", "Jora", "Kasimir", "Lene",
         "Milo", "Nadja", "Oren", "Petra", "Quill", "Runa", "Soren", "Talia", "Ulric", "Vesna", "Wendel", "Yara"]
LAST = ["Ashdown", "Brightwater", "Coldmere", "Dunmore", "Elderby", "Fairholm", "Greyfield", "Hollins"]
CITIES = [("Varnholt", "Estmark"), ("Quenby", "Lorrain"), ("Tessaly", "Ostrava Vale"), ("Marrowgate", "Estmark"),
          ("Pellridge", "Calder"), ("Sunmoor", "Lorrain"), ("Kestrel Bay", "Calder"), ("Orlen", "Ostrava Vale")]
FIELDS = ["chemist", "composer", "architect", "cartographer", "painter", "astronomer"]
WORKS = ["The Salt Road", "Nine Lanterns", "A Theory of Tides", "Glass Orchard", "The Northern Ledger",
         "Winter Harmonics", "Bridges of Ash", "The Quiet Meridian"]


def people(rng: random.Random, n: int) -> list[dict]:
    names = rng.sample([f"{f} {last}" for f in FIRST for last in LAST], n)
    return [{"name": nm, "city": rng.choice(CITIES), "field": rng.choice(FIELDS), "year": rng.randint(1820, 1960),
             "work": rng.choice(WORKS) + f" ({rng.randint(2, 9)})"} for nm in names]


def make_set(name: str, seed: int, n_people: int = 24, n_questions: int = 16) -> tuple[list[dict], list[dict]]:
    rng = random.Random(seed)
    ps = people(rng, n_people)
    corpus, questions = [], []
    for i, p in enumerate(ps):
        city, country = p["city"]
        corpus.append({"id": f"{name}-d{2 * i}", "contents":
                       f"\"{p['name']}\"\n{p['name']} was a {p['field']} born in {city} in {p['year']}. "
                       f"{p['name'].split()[0]} studied in {city} before moving abroad."})
        corpus.append({"id": f"{name}-d{2 * i + 1}", "contents":
                       f"\"{p['work']}\"\n{p['work']} is a work by the {p['field']} {p['name']}, "
                       f"first presented in {p['year'] + rng.randint(20, 40)}."})
    for c, country in sorted(set(CITIES)):
        corpus.append({"id": f"{name}-city-{c.lower().replace(' ', '-')}", "contents":
                       f"\"{c}\"\n{c} is a city in {country}, known for its harbour and old market."})
    for j, p in enumerate(rng.sample(ps, n_questions)):
        city, country = p["city"]
        kind = j % 3
        if kind == 0:  # bridge question (HotpotQA / 2Wiki style)
            q, a = f"In which country was the creator of {p['work']} born?", [country]
        elif kind == 1:  # compositional (MuSiQue style)
            q, a = f"What was the profession of the person born in {city} in {p['year']}?", [p["field"]]
        else:
            q, a = f"In which year was {p['name']} born?", [str(p["year"])]
        questions.append({"id": f"{name}-q{j}", "question": q, "golden_answers": a,
                          "metadata": {"type": ["bridge", "compositional", "comparison"][kind]}})
    return questions, corpus


def main() -> None:
    for seed, name in enumerate(["hotpotqa", "2wikimultihopqa", "musique"]):
        questions, corpus = make_set(name, seed)
        d = OUT / name
        d.mkdir(parents=True, exist_ok=True)
        for fname, rows in (("questions.jsonl", questions), ("corpus.jsonl", corpus)):
            (d / fname).write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
        print(f"{d}: {len(questions)} questions, {len(corpus)} corpus documents")


if __name__ == "__main__":
    main()

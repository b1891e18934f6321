"""Regenerate the bundled OBELICS-format sample corpus (nyx_tasks/data/sample_obelics).

The corpus is committed; this script documents how it was made and rebuilds it
byte-for-byte (seeded). Texts are written for this project from a small bank of
facts; images are drawn with Pillow. Bad cases are included on purpose so the
demo shows real drop counts: a missing image, a corrupt (truncated) image, an
image URL that is an HTML page, a decompression bomb, lists of different
lengths, a slot holding both image and text, non-UTF-8 bytes, invalid JSON,
a duplicate document, the OBELICS end-of-document marker, `general_metadata`
given as `[]`, and per-image metadata with varying keys.

    python scripts/make_sample_corpus.py

It also writes the paper-shape profile's corpus of longer, clean documents
(nyx_tasks/data/sample_obelics_long).
"""

from __future__ import annotations

import io
import json
import random
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image, ImageDraw

OUT = Path(__file__).resolve().parents[1] / "nyx_tasks" / "data" / "sample_obelics"
IMG = OUT / "images"

TOPICS = {
    "lighthouses": [
        "The lighthouse on the northern cape was built in 1871 from granite blocks quarried on the island.",
        "Its lantern room holds a first-order Fresnel lens that can be seen twenty-two nautical miles out to sea.",
        "Keepers climbed one hundred and forty steps every evening to trim the wick and wind the clockwork.",
        "In 1934 the oil lamp was replaced by an electric bulb, and the last keeper left the station in 1986.",
        "The tower is painted with red and white bands so that sailors can recognise it during the day.",
        "Visitors can climb the tower on summer weekends and look across the bay to the fishing village.",
    ],
    "sourdough": [
        "A sourdough starter is a mixture of flour and water colonised by wild yeast and lactic acid bacteria.",
        "Bakers feed the starter every day with equal weights of rye flour and lukewarm water.",
        "The dough rests for twelve hours in a cool kitchen, which gives the bread its sour flavour.",
        "A hot cast-iron pot traps steam during the first twenty minutes of baking and lets the loaf rise.",
        "The crust turns dark brown at two hundred and thirty degrees Celsius while the crumb stays open and moist.",
        "Many bakeries keep a starter alive for decades and say it carries the taste of the town.",
    ],
    "volcanoes": [
        "Shield volcanoes such as Mauna Loa are built almost entirely of fluid basaltic lava flows.",
        "Stratovolcanoes have steep sides made of alternating layers of ash and hardened lava.",
        "The 1980 eruption of Mount St. Helens removed four hundred metres from the top of the mountain.",
        "Volcanologists measure sulfur dioxide in the plume to judge whether magma is rising.",
        "Pyroclastic flows can travel faster than one hundred kilometres per hour down a slope.",
        "Fertile volcanic soil is the reason many farms sit on the flanks of active volcanoes.",
    ],
    "bicycles": [
        "The safety bicycle of the 1880s introduced two wheels of equal size and a chain drive to the rear wheel.",
        "Pneumatic tyres, patented by John Boyd Dunlop in 1888, made cycling on rough roads far more comfortable.",
        "A derailleur moves the chain between sprockets so the rider can change gears while pedalling.",
        "Modern road bikes weigh less than seven kilograms thanks to carbon fibre frames.",
        "Cargo bikes with a box in front can carry two children or a week of groceries across town.",
        "Cities that built protected bike lanes saw the number of daily riders double within a few years.",
    ],
    "honeybees": [
        "A honeybee colony contains one queen, a few hundred drones and tens of thousands of worker bees.",
        "Foragers perform a waggle dance to tell their sisters the direction and distance of a flower patch.",
        "Bees turn nectar into honey by adding enzymes and fanning it with their wings until water evaporates.",
        "Beeswax is secreted from glands on the abdomen of young workers and shaped into hexagonal cells.",
        "In winter the colony forms a tight cluster and shivers its flight muscles to keep the queen warm.",
        "Beekeepers inspect the frames every week in spring to look for queen cells and signs of disease.",
    ],
    "tides": [
        "Tides are caused mainly by the gravitational pull of the Moon on the oceans of the Earth.",
        "Most coasts see two high tides and two low tides roughly every twenty-four hours and fifty minutes.",
        "Spring tides, with the largest range, occur when the Sun and Moon line up at new and full moon.",
        "The Bay of Fundy in Canada has a tidal range of up to sixteen metres, the largest in the world.",
        "Tide pools left behind at low water shelter crabs, anemones and small fish.",
        "Harbour masters publish tide tables so that ships with deep keels can plan when to enter port.",
    ],
    "printing": [
        "Johannes Gutenberg combined movable metal type, oil-based ink and a screw press around 1450.",
        "A compositor set each line of type by hand in a composing stick, letter by letter and upside down.",
        "The Gutenberg Bible was printed in two columns of forty-two lines on each page.",
        "Steam-powered rotary presses in the nineteenth century printed thousands of newspaper sheets per hour.",
        "Linotype machines cast whole lines of type from molten metal, which sped up newspaper work.",
        "Offset lithography transfers ink from a plate to a rubber blanket and then onto the paper.",
    ],
    "glaciers": [
        "A glacier forms where more snow falls in winter than melts in summer, year after year.",
        "The weight of the snow compresses it into dense blue ice that slowly flows downhill.",
        "Crevasses open where the ice bends over a bump in the bedrock or speeds up around a curve.",
        "Glaciers carve U-shaped valleys and leave ridges of rock debris called moraines.",
        "The Aletsch Glacier in Switzerland is about twenty kilometres long and the largest in the Alps.",
        "Scientists drill ice cores to read the climate of the past from trapped air bubbles.",
    ],
}
COLORS = {"red": (200, 40, 40), "blue": (40, 70, 200), "green": (40, 150, 60), "yellow": (220, 200, 40),
          "purple": (130, 50, 160), "orange": (230, 130, 30)}
SHAPES = ["circle", "square", "triangle"]


def draw_image(rng: random.Random, name: str, fmt: str) -> tuple[str, dict]:
    w, h = rng.choice([(96, 64), (128, 96), (80, 80), (120, 90)])
    bg = tuple(rng.randint(200, 250) for _ in range(3))
    color_name = rng.choice(list(COLORS))
    shape = rng.choice(SHAPES)
    img = Image.new("RGB", (w, h), bg)
    d = ImageDraw.Draw(img)
    box = (w // 4, h // 6, 3 * w // 4, 5 * h // 6)
    if shape == "circle":
        d.ellipse(box, fill=COLORS[color_name])
    elif shape == "square":
        d.rectangle(box, fill=COLORS[color_name])
    else:
        d.polygon([(w // 2, h // 6), (w // 4, 5 * h // 6), (3 * w // 4, 5 * h // 6)], fill=COLORS[color_name])
    for _ in range(rng.randint(2, 6)):  # a little texture so JPEG/PNG bytes differ
        x, y = rng.randrange(w), rng.randrange(h)
        d.point((x, y), fill=(0, 0, 0))
    ext = "png" if fmt == "PNG" else "jpg"
    fname = f"{name}.{ext}"
    buf = io.BytesIO()
    img.save(buf, format=fmt, **({"quality": 85} if fmt == "JPEG" else {}))
    (IMG / fname).write_bytes(buf.getvalue())
    meta = {"formatted_filename": name, "src": f"https://example.org/img/{fname}",
            "alt_text": f"a {color_name} {shape}", "original_width": w, "original_height": h}
    for key in rng.sample(["src", "alt_text", "original_width", "original_height"], rng.randint(0, 2)):
        del meta[key]  # the real data's per-image keys vary
    return f"images/{fname}", meta


def make_doc(rng: random.Random, i: int, n_images: int, min_paras: int = 3) -> dict:
    topic = rng.choice(list(TOPICS))
    facts = TOPICS[topic]
    n_paras = rng.randint(min_paras, min_paras + 4)
    paras = []
    for _ in range(n_paras):
        paras.append(" ".join(rng.sample(facts, rng.randint(2, 4))))
    slots: list[tuple[str | None, str | None, dict | None]] = [(None, p, None) for p in paras]
    for k in range(n_images):
        url, meta = draw_image(rng, f"doc{i:03d}-img{k}", rng.choice(["PNG", "JPEG"]))
        slots.insert(rng.randint(0, len(slots)), (url, None, meta))
    general = {"url": f"https://example.org/{topic}/{i}", "warc_filename": f"crawl-{i % 3}.warc.gz",
               "warc_record_offset": 1000 * i, "warc_record_length": 5000 + i}
    return {
        "images": [s[0] for s in slots],
        "texts": [s[1] for s in slots],
        "metadata": json.dumps([s[2] for s in slots]),
        "general_metadata": json.dumps(general),
    }


def main() -> None:
    rng = random.Random(2510_17354)
    IMG.mkdir(parents=True, exist_ok=True)
    for p in IMG.iterdir():
        p.unlink()
    for p in OUT.glob("obelics-*"):
        p.unlink()
    image_counts = [0] * 16 + [1] * 14 + [2, 2, 3, 3, 4] + [0, 1, 0, 1, 2]
    docs = [make_doc(rng, i, n) for i, n in enumerate(image_counts)]
    # Seven images packed in a short document: chunks with > 5 images are dropped.
    crowded = make_doc(rng, 90, 0, min_paras=2)
    crowded["texts"] = [crowded["texts"][0]] + [None] * 7 + crowded["texts"][1:]
    crowded["images"] = [None] + [draw_image(rng, f"crowded-img{k}", "PNG")[0] for k in range(7)] + [None] * (len(crowded["texts"]) - 8)
    crowded["metadata"] = json.dumps([None] * len(crowded["texts"]))
    docs.append(crowded)
    # The extraction marker and a general_metadata of [] (both as in the real data).
    docs[3]["texts"][-1] = docs[3]["texts"][-1] + " END_OF_DOCUMENT_TOKEN_TO_BE_REPLACED"
    docs[5]["general_metadata"] = "[]"
    docs[7]["texts"][0] = "A caption that literally says <image> should not become an image. " + docs[7]["texts"][0]

    # --- bad cases (each becomes a named drop) ---
    bad: list[dict | bytes] = []
    d = make_doc(rng, 100, 1)  # image file that does not exist
    d["images"] = ["images/missing-photo.png" if x else None for x in d["images"]]
    bad.append(d)
    d = make_doc(rng, 101, 1)  # corrupt image: a truncated PNG
    good = next(x for x in d["images"] if x)
    raw = (OUT / good).read_bytes()
    (IMG / "corrupt.png").write_bytes(raw[: len(raw) // 2])
    (OUT / good).unlink()
    d["images"] = ["images/corrupt.png" if x else None for x in d["images"]]
    bad.append(d)
    d = make_doc(rng, 102, 1)  # an "image" URL that is an HTML page
    (IMG / "gallery.html").write_text("<!doctype html><html><body><img src='x.png'></body></html>\n")
    (OUT / next(x for x in d["images"] if x)).unlink()
    d["images"] = ["images/gallery.html" if x else None for x in d["images"]]
    bad.append(d)
    d = make_doc(rng, 103, 1)  # decompression bomb: tiny file, 25 megapixels
    bomb = Image.new("1", (5000, 5000))
    buf = io.BytesIO()
    bomb.save(buf, format="PNG", optimize=True)
    (IMG / "bomb.png").write_bytes(buf.getvalue())
    (OUT / next(x for x in d["images"] if x)).unlink()
    d["images"] = ["images/bomb.png" if x else None for x in d["images"]]
    bad.append(d)
    d = make_doc(rng, 104, 0)  # lists of different lengths
    d["images"] = d["images"][:-1]
    bad.append(d)
    d = make_doc(rng, 105, 0)  # a slot with both an image and a text
    d["images"][0] = "images/doc000-img0.png"
    bad.append(d)
    d = make_doc(rng, 106, 0)  # non-UTF-8 bytes in the text (Latin-1 encoded line)
    d["texts"][0] = "Caf\u00e9 cr\u00e8me " + d["texts"][0]
    bad.append(json.dumps(d, ensure_ascii=False).encode("latin-1"))
    bad.append(b'{"images": [null], "texts": ["an unterminated row"\n')  # invalid JSON

    def jsonl(rows) -> bytes:
        return b"".join((r if isinstance(r, bytes) else json.dumps(r).encode()) + b"\n" for r in rows)

    (OUT / "obelics-00000.jsonl").write_bytes(jsonl(docs[:18] + bad[:5] + [docs[0]]))  # + an exact duplicate
    (OUT / "obelics-00001.jsonl").write_bytes(jsonl(docs[18:] + bad[5:]))
    # A Parquet shard too, with the hub's column types (metadata as JSON strings).
    extra = [make_doc(rng, 200 + i, n) for i, n in enumerate([0, 0, 0, 1, 1, 2, 0, 1])]
    table = pa.table({
        "images": pa.array([r["images"] for r in extra], pa.list_(pa.string())),
        "texts": pa.array([r["texts"] for r in extra], pa.list_(pa.string())),
        "metadata": pa.array([r["metadata"] for r in extra], pa.string()),
        "general_metadata": pa.array([r["general_metadata"] for r in extra], pa.string()),
    })
    pq.write_table(table, OUT / "obelics-00002.parquet", compression="zstd")
    n = len(docs) + len(bad) + len(extra)
    size = sum(p.stat().st_size for p in OUT.rglob("*") if p.is_file())
    print(f"wrote {n} rows ({len(docs) + len(extra)} good, {len(bad)} bad) to {OUT}: {size / 1e6:.2f} MB")


LONG = OUT.parent / "sample_obelics_long"


def main_long() -> None:
    """The paper-shape profile's corpus (configs/paper-shape.yaml): 40 clean, longer documents
    (~4 full 200-token chunks each instead of ~1), so a 100-chunk sample and the random-weight
    models' few surviving questions still reach every stage; image counts in the paper's mix."""
    global IMG
    rng = random.Random(2510_17354 + 1)
    IMG = LONG / "images"
    IMG.mkdir(parents=True, exist_ok=True)
    for p in IMG.iterdir():
        p.unlink()
    counts = [0] * 16 + [1] * 14 + [2, 2, 3, 3, 4] + [1, 2, 1, 0, 1]
    docs = [make_doc(rng, 300 + i, n, min_paras=14) for i, n in enumerate(counts)]
    (LONG / "obelics-long-00000.jsonl").write_bytes(b"".join(json.dumps(d).encode() + b"\n" for d in docs))
    size = sum(p.stat().st_size for p in LONG.rglob("*") if p.is_file())
    print(f"wrote {len(docs)} rows to {LONG}: {size / 1e6:.2f} MB")


if __name__ == "__main__":
    main()
    main_long()

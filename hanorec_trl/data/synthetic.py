"""A seeded synthetic recommendation dataset written in the MovieLens-1M file format.

It needs no input files and is the default data of the tests and the example jobs. What it models:

* **Items** ("movies") have a primary genre and sometimes a secondary one. The title is made of words that belong to
  its genres (``"Haunted Midnight (1987)"`` is Horror) and the poster is drawn from them: the background colour and
  the large shape belong to the primary genre, a small corner shape to the secondary one. Both text and image
  therefore carry the genre signal, each with its own noise.
* **Near-duplicates**: a fraction of the items are sequels of another item (``"Haunted Midnight II (1990)"``), with
  the same genres and an almost identical poster. They are the hard negatives that make hardness-aware weighting
  matter.
* **Users** have a taste (a distribution over genres) that drifts linearly from a starting taste to an end taste
  along their sequence, so the most recent items predict the next one better than old ones; after watching an item
  a user often watches its sequel next.

Files written (the same as MovieLens-1M, so :func:`~hanorec_trl.data.movielens.load_movielens_1m` reads them):
``ratings.dat`` (``UserID::MovieID::Rating::Timestamp``, strictly increasing timestamps per user), ``movies.dat``
(ISO-8859-1, ``MovieID::Title (Year)::Genre|Genre``), ``users.dat`` and ``posters/<MovieID>.jpg``, plus
``synthetic_config.json`` recording the settings. The same config gives byte-identical files.
"""

from __future__ import annotations

import bisect
import json
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw
from tqdm.auto import tqdm

__all__ = ["GENRES", "SyntheticConfig", "cached_synthetic_movielens", "write_synthetic_movielens"]

# name, poster colour, poster shape, title words. Colour and shape together identify a genre.
# fmt: off
GENRES: tuple[tuple[str, tuple[int, int, int], str, tuple[str, ...]], ...] = (
    ("Action", (200, 40, 30), "triangle",
     ("Bullet", "Fury", "Strike", "Rampage", "Impact", "Blast",
      "Vengeance", "Hammer", "Rogue", "Firestorm", "Steel", "Takedown")),
    ("Adventure", (230, 140, 20), "diamond",
     ("Quest", "Jungle", "Treasure", "Voyage", "Island", "Expedition",
      "Lost", "Canyon", "Compass", "Horizon", "Temple", "Odyssey")),
    ("Animation", (250, 210, 40), "circle",
     ("Bubbles", "Toon", "Doodle", "Sparkle", "Pixel", "Wiggle",
      "Cartoon", "Marble", "Giggle", "Puddle", "Bouncy", "Crayon")),
    ("Children's", (120, 220, 90), "square",
     ("Puppy", "Playground", "Lullaby", "Kitten", "Treehouse", "Picnic",
      "Teddy", "Cupcake", "Schoolyard", "Balloon", "Pony", "Sandbox")),
    ("Comedy", (255, 150, 200), "ring",
     ("Wacky", "Hangover", "Goofball", "Prank", "Chaos", "Oops",
      "Bachelor", "Silly", "Slapstick", "Blunder", "Nutty", "Roommates")),
    ("Crime", (70, 70, 90), "stripes",
     ("Heist", "Mob", "Racket", "Alibi", "Syndicate", "Gangster",
      "Bribe", "Cartel", "Getaway", "Witness", "Ransom", "Underworld")),
    ("Documentary", (150, 150, 110), "square",
     ("Chronicle", "Portrait", "Archive", "Truth", "Inside", "Journey",
      "Record", "Witnessing", "Voices", "Footage", "Report", "Anatomy")),
    ("Drama", (120, 60, 140), "stripes",
     ("Silence", "Letters", "Autumn", "Father", "Promise", "Tears",
      "Daughter", "Winter", "Farewell", "Memory", "Whisper", "Home")),
    ("Fantasy", (160, 90, 220), "diamond",
     ("Dragon", "Wizard", "Enchanted", "Realm", "Sorcerer", "Crown",
      "Elven", "Spell", "Kingdom", "Amulet", "Unicorn", "Prophecy")),
    ("Film-Noir", (30, 30, 30), "stripes",
     ("Shadow", "Smoke", "Dame", "Noir", "Gin", "Fedora",
      "Rain", "Backstreet", "Double", "Cigarette", "Neon", "Nightfall")),
    ("Horror", (100, 0, 0), "cross",
     ("Haunted", "Scream", "Blood", "Crypt", "Midnight", "Demon",
      "Grave", "Possessed", "Curse", "Skull", "Slasher", "Nightmare")),
    ("Musical", (240, 100, 160), "dots",
     ("Melody", "Rhythm", "Broadway", "Chorus", "Dance", "Serenade",
      "Tap", "Harmony", "Jazz", "Tune", "Encore", "Waltz")),
    ("Mystery", (40, 60, 120), "ring",
     ("Riddle", "Clue", "Secret", "Enigma", "Puzzle", "Detective",
      "Hidden", "Cipher", "Vanishing", "Key", "Locked", "Manor")),
    ("Romance", (230, 80, 120), "circle",
     ("Love", "Kiss", "Heart", "Wedding", "Valentine", "Sweetheart",
      "Romance", "Paris", "Bride", "Moonlight", "Darling", "Rose")),
    ("Sci-Fi", (20, 160, 200), "ring",
     ("Galaxy", "Robot", "Cyber", "Android", "Orbit", "Quantum",
      "Alien", "Starship", "Nebula", "Laser", "Clone", "Planet")),
    ("Thriller", (40, 40, 60), "triangle",
     ("Pursuit", "Hostage", "Countdown", "Stalker", "Trap", "Deadline",
      "Conspiracy", "Target", "Fugitive", "Panic", "Ambush", "Pressure")),
    ("War", (90, 100, 50), "cross",
     ("Battalion", "Trench", "Platoon", "Siege", "Frontline", "Bomber",
      "Sergeant", "Invasion", "Battle", "Medal", "Beachhead", "Regiment")),
    ("Western", (180, 120, 60), "dots",
     ("Outlaw", "Saloon", "Frontier", "Sheriff", "Gunslinger", "Prairie",
      "Rustler", "Stagecoach", "Mesa", "Desperado", "Rodeo", "Canyon Trail")),
)
# fmt: on
_SEQUEL_SUFFIXES = ("II", "III", "Returns", "Part 2", "Reloaded")
_TITLE_FORMS = ("{a} {b}", "The {a} {b}", "{a} of the {b}", "{b}: {a}")


@dataclass
class SyntheticConfig:
    """Settings of :func:`write_synthetic_movielens`. The defaults are small (a few hundred users, well under a
    second); a MovieLens-1M-sized dataset is ``num_users=6040, num_items=3900, mean_interactions=160,
    max_interactions=1000`` (see ``docs/data.md`` for the measured time)."""

    num_users: int = field(default=300, metadata={"help": "Number of users."})
    num_items: int = field(default=400, metadata={"help": "Number of items (movies), sequels included."})
    num_genres: int = field(default=18, metadata={"help": f"Use the first N of the {len(GENRES)} genres."})
    min_interactions: int = field(
        default=4, metadata={"help": "Fewest interactions per user (users below 6 exercise the protocol's filter)."}
    )
    mean_interactions: float = field(default=16.0, metadata={"help": "Mean interactions per user."})
    max_interactions: int = field(default=60, metadata={"help": "Most interactions per user."})
    taste_concentration: float = field(
        default=0.3, metadata={"help": "Dirichlet concentration of user tastes over genres (small = focused users)."}
    )
    drift: float = field(
        default=0.6, metadata={"help": "How far tastes move from the start taste to the end taste (0 = no drift)."}
    )
    secondary_genre_prob: float = field(default=0.4, metadata={"help": "Probability that an item has a second genre."})
    sequel_fraction: float = field(
        default=0.15, metadata={"help": "Fraction of items that are near-duplicate sequels of another item."}
    )
    sequel_follow_prob: float = field(
        default=0.3, metadata={"help": "Probability that a user next watches the sequel of the item just watched."}
    )
    popularity_exponent: float = field(default=0.8, metadata={"help": "Zipf exponent of item popularity."})
    poster_size: int = field(default=56, metadata={"help": "Poster width and height in pixels."})
    seed: int = field(default=0, metadata={"help": "Random seed: the same config gives byte-identical files."})

    def __post_init__(self) -> None:
        if not 1 <= self.num_genres <= len(GENRES):
            raise ValueError(f"num_genres must be between 1 and {len(GENRES)}, got {self.num_genres}")
        if self.num_items < 2 * self.num_genres:
            raise ValueError(f"num_items ({self.num_items}) must be at least twice num_genres ({self.num_genres})")
        if not 1 <= self.min_interactions <= self.max_interactions:
            raise ValueError("need 1 <= min_interactions <= max_interactions")
        if self.max_interactions > self.num_items:
            raise ValueError(f"max_interactions ({self.max_interactions}) exceeds num_items ({self.num_items})")
        if self.poster_size < 8:
            raise ValueError("poster_size must be at least 8 pixels")


@dataclass
class _Item:
    genres: tuple[int, ...]
    title: str
    year: int
    poster: dict  # drawing parameters, shared (jittered) by sequels
    base: int | None = None  # index of the item this one is a sequel of


def _make_items(cfg: SyntheticConfig, rng: np.random.Generator) -> list[_Item]:
    num_genres = cfg.num_genres
    genre_weights = rng.dirichlet(np.full(num_genres, 2.0))
    items: list[_Item] = []
    used_titles: set[str] = set()
    num_sequels = int(round(cfg.sequel_fraction * cfg.num_items))
    num_originals = cfg.num_items - num_sequels
    for index in range(num_originals):
        # every genre gets at least one item, then genres follow their weights
        primary = index if index < num_genres else int(rng.choice(num_genres, p=genre_weights))
        genres = (primary,)
        if num_genres > 1 and rng.random() < cfg.secondary_genre_prob:
            secondary = int(rng.integers(num_genres - 1))
            genres = (primary, secondary + (secondary >= primary))
        words_a, words_b = GENRES[genres[0]][3], GENRES[genres[-1]][3]
        for _ in range(100):
            a = words_a[int(rng.integers(len(words_a)))]
            b = words_b[int(rng.integers(len(words_b)))]
            form = _TITLE_FORMS[int(rng.integers(len(_TITLE_FORMS)))]
            year = int(rng.integers(1950, 2001))
            title = form.format(a=a, b=b)
            if a != b and f"{title} ({year})" not in used_titles:
                break
        else:  # the vocabulary is exhausted: number the title
            title = f"{title} {index}"
        used_titles.add(f"{title} ({year})")
        poster = {
            "jitter": rng.integers(-25, 26, size=3).tolist(),
            "center": rng.uniform(0.35, 0.65, size=2).tolist(),
            "scale": float(rng.uniform(0.28, 0.42)),
            "corner": int(rng.integers(4)),
            "specks": rng.uniform(0, 1, size=(6, 2)).tolist(),
        }
        items.append(_Item(genres=genres, title=title, year=year, poster=poster))
    for _ in range(num_sequels):
        base_index = int(rng.integers(num_originals))
        base = items[base_index]
        for suffix in _SEQUEL_SUFFIXES:
            year = min(2000, base.year + int(rng.integers(1, 6)))
            title = f"{base.title} {suffix}"
            if f"{title} ({year})" not in used_titles:
                break
        used_titles.add(f"{title} ({year})")
        poster = dict(base.poster)
        poster["jitter"] = (np.asarray(base.poster["jitter"]) + rng.integers(-6, 7, size=3)).tolist()
        poster["center"] = (np.asarray(base.poster["center"]) + rng.uniform(-0.04, 0.04, size=2)).tolist()
        items.append(_Item(genres=base.genres, title=title, year=year, poster=poster, base=base_index))
    return items


def _draw_shape(draw: ImageDraw.ImageDraw, shape: str, cx: float, cy: float, r: float, colour: tuple) -> None:
    box = (cx - r, cy - r, cx + r, cy + r)
    if shape == "circle":
        draw.ellipse(box, fill=colour)
    elif shape == "ring":
        draw.ellipse(box, outline=colour, width=max(1, int(r / 3)))
    elif shape == "square":
        draw.rectangle(box, fill=colour)
    elif shape == "triangle":
        draw.polygon([(cx, cy - r), (cx + r, cy + r), (cx - r, cy + r)], fill=colour)
    elif shape == "diamond":
        draw.polygon([(cx, cy - r), (cx + r, cy), (cx, cy + r), (cx - r, cy)], fill=colour)
    elif shape == "cross":
        w = max(1, r / 3)
        draw.rectangle((cx - w, cy - r, cx + w, cy + r), fill=colour)
        draw.rectangle((cx - r, cy - w, cx + r, cy + w), fill=colour)
    elif shape == "stripes":
        w = max(1, r / 4)
        for k in (-1, 0, 1):
            x = cx + k * 2.2 * w
            draw.rectangle((x - w / 2, cy - r, x + w / 2, cy + r), fill=colour)
    elif shape == "dots":
        d = max(1, r / 3)
        for dx, dy in ((-1, -1), (1, -1), (-1, 1), (1, 1), (0, 0)):
            x, y = cx + dx * r * 0.6, cy + dy * r * 0.6
            draw.ellipse((x - d, y - d, x + d, y + d), fill=colour)
    else:  # pragma: no cover - GENRES only uses the shapes above
        raise ValueError(f"unknown shape {shape!r}")


def _draw_poster(item: _Item, size: int) -> Image.Image:
    """Background colour + large shape = primary genre; small corner shape = secondary genre; a few specks."""
    p = item.poster
    primary = GENRES[item.genres[0]]
    base = np.clip(np.asarray(primary[1]) + np.asarray(p["jitter"]), 0, 255).astype(np.float32)
    shade = np.linspace(0.8, 1.15, size, dtype=np.float32)[:, None, None]
    background = np.clip(base[None, None, :] * shade, 0, 255).astype(np.uint8)
    img = Image.fromarray(np.broadcast_to(background, (size, size, 3)).copy())
    draw = ImageDraw.Draw(img)
    light = tuple(int(255 - (255 - c) * 0.25) for c in base)  # a pale tint of the background
    cx, cy = p["center"][0] * size, p["center"][1] * size
    _draw_shape(draw, primary[2], cx, cy, p["scale"] * size, light)
    if len(item.genres) > 1:
        secondary = GENRES[item.genres[1]]
        corner = p["corner"]
        sx = size * (0.17 if corner % 2 == 0 else 0.83)
        sy = size * (0.17 if corner < 2 else 0.83)
        _draw_shape(draw, secondary[2], sx, sy, size * 0.13, secondary[1])
    for x, y in p["specks"]:
        draw.point((x * (size - 1), y * (size - 1)), fill=(255, 255, 255))
    return img


def _make_users(cfg: SyntheticConfig, items: list[_Item], rng: np.random.Generator) -> list[list[tuple[int, int]]]:
    """For each user: a list of (item index, rating) in watching order."""
    num_genres = cfg.num_genres
    # items per genre (primary or secondary), drawn by a Zipf popularity over the catalogue (cumulative weights)
    popularity = 1.0 / (1.0 + rng.permutation(len(items))) ** cfg.popularity_exponent
    by_genre = [[k for k, it in enumerate(items) if g in it.genres] for g in range(num_genres)]
    genre_cum = [np.cumsum(popularity[idx]).tolist() for idx in by_genre]  # Python lists: bisect is fast
    global_cum = np.cumsum(popularity).tolist()
    item_genres = [set(it.genres) for it in items]
    sequels: dict[int, list[int]] = {}
    for k, it in enumerate(items):
        if it.base is not None:
            sequels.setdefault(it.base, []).append(k)
            sequels.setdefault(k, []).append(it.base)
    extra_mean = max(cfg.mean_interactions - cfg.min_interactions, 0.0)

    def draw(cum: list[float], u: float) -> int:
        return min(bisect.bisect_right(cum, u * cum[-1]), len(cum) - 1)

    users = []
    for _ in tqdm(range(cfg.num_users), desc="synthetic users", disable=cfg.num_users < 5000, leave=False):
        extra = int(rng.geometric(1.0 / (extra_mean + 1.0))) - 1 if extra_mean > 0 else 0
        length = min(cfg.min_interactions + extra, cfg.max_interactions)
        start = rng.dirichlet(np.full(num_genres, cfg.taste_concentration))
        end = rng.dirichlet(np.full(num_genres, cfg.taste_concentration))
        weight = cfg.drift * np.arange(length) / max(length - 1, 1)
        tastes = (1.0 - weight)[:, None] * start[None, :] + weight[:, None] * end[None, :]  # [length, genres]
        taste_cum = np.cumsum(tastes, axis=1).tolist()
        top_two = np.argsort(-tastes, axis=1)[:, :2].tolist()
        draws = rng.random((length, 4)).tolist()  # follow-a-sequel, genre, liked, rating
        spare = iter(rng.random(4 * length).tolist())  # uniforms for item draws (and retries)
        watched: set[int] = set()
        history: list[tuple[int, int]] = []
        for step in range(length):
            follow, genre_u, liked_u, rating_u = draws[step]
            choice = None
            if history and follow < cfg.sequel_follow_prob:
                options = [k for k in sequels.get(history[-1][0], ()) if k not in watched]
                if options:
                    choice = options[int(rng.integers(len(options)))]
            if choice is None:
                genre = draw(taste_cum[step], genre_u)
                pool, pool_cum = by_genre[genre], genre_cum[genre]
                for _attempt in range(8):
                    u = next(spare, None)
                    k = pool[draw(pool_cum, rng.random() if u is None else u)]
                    if k not in watched:
                        choice = k
                        break
                while choice is None:  # the genre is (nearly) exhausted for this user: any unwatched item
                    k = draw(global_cum, rng.random())
                    if k not in watched:
                        choice = k
            liked = bool(item_genres[choice].intersection(top_two[step]))
            rating = 5 if liked and liked_u < 0.7 else 2 + int(rating_u * 3)
            watched.add(choice)
            history.append((choice, rating))
        users.append(history)
    return users


def write_synthetic_movielens(
    out_dir: str | Path, config: SyntheticConfig | None = None, *, overwrite: bool = False
) -> Path:
    """Write a synthetic dataset in the MovieLens-1M format into ``out_dir`` and return the folder.

    ``out_dir`` must not exist or be empty; ``overwrite=True`` replaces a folder this function wrote before (it has
    ``synthetic_config.json``) and refuses any other. Load the result with
    :func:`~hanorec_trl.data.movielens.load_movielens_1m`.
    """
    cfg = config or SyntheticConfig()
    out = Path(out_dir)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        if not overwrite:
            raise FileExistsError(f"{out} exists and is not empty; pass overwrite=True to replace a synthetic dataset")
        if not (out / "synthetic_config.json").is_file():
            raise FileExistsError(f"{out} is not a synthetic dataset written by this function; refusing to replace it")
        shutil.rmtree(out)
    rng_items, rng_users, rng_meta = (np.random.default_rng(s) for s in np.random.SeedSequence(cfg.seed).spawn(3))
    items = _make_items(cfg, rng_items)
    users = _make_users(cfg, items, rng_users)

    posters = out / "posters"
    posters.mkdir(parents=True, exist_ok=True)
    for k, item in enumerate(tqdm(items, desc="synthetic posters", disable=len(items) < 5000, leave=False)):
        _draw_poster(item, cfg.poster_size).save(posters / f"{k + 1}.jpg", format="JPEG", quality=92)

    movie_lines = []
    for k, item in enumerate(items):
        genres = "|".join(GENRES[g][0] for g in item.genres)
        movie_lines.append(f"{k + 1}::{item.title} ({item.year})::{genres}\n")
    (out / "movies.dat").write_bytes("".join(movie_lines).encode("latin-1"))

    rating_lines = []
    user_lines = []
    ages = (1, 18, 25, 35, 45, 50, 56)
    for u, history in enumerate(users, 1):
        stamp = int(rng_meta.integers(956_700_000, 1_040_000_000))
        for k, rating in history:
            stamp += 60 + int(rng_meta.exponential(3 * 86_400))
            rating_lines.append(f"{u}::{k + 1}::{rating}::{stamp}\n")
        gender = "MF"[int(rng_meta.integers(2))]
        age = ages[int(rng_meta.integers(len(ages)))]
        user_lines.append(
            f"{u}::{gender}::{age}::{int(rng_meta.integers(21))}::{int(rng_meta.integers(10000, 99999))}\n"
        )
    (out / "ratings.dat").write_text("".join(rating_lines), encoding="ascii")
    (out / "users.dat").write_text("".join(user_lines), encoding="ascii")
    (out / "synthetic_config.json").write_text(json.dumps(asdict(cfg), indent=2, sort_keys=True) + "\n")
    return out


def cached_synthetic_movielens(config: SyntheticConfig | None = None) -> Path:
    """The synthetic dataset of ``config``, written once into the library's cache folder and reused (the same
    settings give byte-identical files); the folder is named by the settings' hash."""
    import dataclasses
    import hashlib
    import json

    from ..files import atomic_folder, cache_dir

    cfg = config or SyntheticConfig()
    key = hashlib.sha256(json.dumps(dataclasses.asdict(cfg), sort_keys=True).encode()).hexdigest()[:12]
    folder = cache_dir() / "synthetic" / f"movielens-{key}"
    if not (folder / "synthetic_config.json").is_file():
        with atomic_folder(folder, replace=False) as tmp:
            write_synthetic_movielens(tmp, cfg, overwrite=True)
    return folder

"""From a typed description to what tagseg does with it: anatomy, lesion kind, CT window, segment name and the
standard terminology codes ("tumeur du pancréas", "pancreatik tumor" and "pancreatic tumor" read the same).

`parse_description` is the one reader; the engine (CT window, model choice), the CLI (`tagseg describe`,
`segment --json`), the server and the Slicer effect all call it. How a description is read:

1. Folded: lower case, accents and umlauts dropped ("pancréas" -> "pancreas", "Bauchspeicheldrüse" ->
   "bauchspeicheldruse"), then split into words of ASCII letters.
2. Anatomy: the first anatomy, in `ANATOMY_WORDS` order, one of whose words occurs. English words match a
   whole word or the start of one ("lungs", "hepatocellular"), as they always have. Other languages' words
   (`FOREIGN_ANATOMY_WORDS`) match whole words, or word starts where written "lunge*" (German compounds,
   "Lungentumor"); entries with a space match as phrases ("cabeza y cuello").
3. Lesion kind: the first word holding a lesion word (`LESION_KINDS`: "tumeur", "Krebs", "nódulo", ...; in
   German compounds anywhere in the word, "Lebermetastase"), reported as its English kind ("metastasis").
4. Typos: each word that matched nothing is compared with every vocabulary word by optimal string alignment
   distance (rapidfuzz; a swap of neighbours is one edit), and counts where steps 2-3 found no word of its
   kind. A vocabulary word of 7+ letters accepts 2 edits, of 5-6 letters 1, the 4-letter "lung", "bone" and
   "cyst" 1; other short words need the exact word. Real words one edit from a vocabulary word ("long",
   "drain", "region", "zone") are never corrected.
5. "nodule" on its own (no organ named) means a lung nodule, as before.

Unknown words are fine: the text still names the segment, the anatomy is then None and the CT window soft
tissue. Measured on `Testing/Python/data/descriptions.tsv` (README, "tagseg describe").
"""

from __future__ import annotations

import json
import re
import unicodedata
from dataclasses import dataclass
from pathlib import Path

from . import intensity, terminology
from .errors import one_line

# anatomy key -> English words that name it (whole words or word prefixes). The key order is the priority when
# a text names two ("liver metastasis of a pancreatic cancer" reads as pancreas).
ANATOMY_WORDS: dict[str, tuple[str, ...]] = {
    "pancreas": ("pancreas", "pancreatic", "pdac", "pnet", "ipmn"),
    "liver": ("liver", "hepatic", "hepato", "hcc", "hepatocellular", "cholangio"),
    "kidney": ("kidney", "renal", "rcc", "nephro"),
    "lung": ("lung", "pulmonary", "nsclc", "sclc", "bronch"),
    "brain": ("brain", "glioma", "glioblastoma", "gbm", "meningioma", "cerebral", "astrocytoma", "intracranial"),
    "breast": ("breast", "mammary"),
    "colon": ("colon", "colorectal", "rectal", "rectum", "bowel"),
    "prostate": ("prostate", "prostatic"),
    "bladder": ("bladder", "urothelial"),
    "stomach": ("stomach", "gastric"),
    "adrenal": ("adrenal",),
    "spleen": ("spleen", "splenic"),
    "bone": ("bone", "osseous", "skeletal", "vertebra", "vertebral"),
    "lymph_node": ("lymph", "nodal"),
    "head_neck": ("head and neck", "oropharyn", "larynx", "laryngeal", "thyroid"),
}

# The same anatomies in French, German, Spanish, Italian and Portuguese, folded (no accents), in
# resources/foreign_anatomy_words.json (anatomy -> language -> words: a vocabulary a translator edits, not
# code). A word matches whole; "word*" also matches as the start of a longer word. Short words that are also
# common words elsewhere are left out or only used in phrases ("rim", Portuguese kidney, is "do rim": "rim
# enhancement" is English).
FOREIGN_ANATOMY_WORDS: dict[str, dict[str, tuple[str, ...]]] = {
    anatomy: {language: tuple(words) for language, words in by_language.items()}
    for anatomy, by_language in json.loads(
        (Path(__file__).resolve().parent / "resources" / "foreign_anatomy_words.json").read_text(encoding="utf-8")
    ).items()
}

# words that suggest an anatomy only when no organ is named ("thyroid nodule" is not a lung nodule)
WEAK_ANATOMY_WORDS = {"nodule": "lung", "nodulo": "lung", "rundherd": "lung", "glioma": "brain", "metastasis": None}

LESION_WORDS = (
    "tumor",
    "tumour",
    "lesion",
    "cancer",
    "mass",
    "nodule",
    "metastasis",
    "metastases",
    "cyst",
    "carcinoma",
    "neoplasm",
    "malignancy",
)

# lesion word (folded; any language) -> its English kind. Matched at a word's start, and (6+ letters) anywhere in
# a word, for compounds ("Lungentumor", "Brustkrebs" has "krebs": 5 letters, listed as a compound part below).
LESION_KINDS: dict[str, str] = {
    # English
    "tumor": "tumor",
    "tumour": "tumor",
    "lesion": "lesion",
    "cancer": "cancer",
    "mass": "mass",
    "nodule": "nodule",
    "metastasis": "metastasis",
    "metastases": "metastasis",
    "cyst": "cyst",
    "carcinoma": "carcinoma",
    "neoplasm": "neoplasm",
    "malignancy": "cancer",
    # French
    "tumeur": "tumor",
    "masse": "mass",
    "metastase": "metastasis",
    "kyste": "cyst",
    "carcinome": "carcinoma",
    "neoplasie": "neoplasm",
    # German
    "krebs": "cancer",
    "lasion": "lesion",
    "raumforderung": "mass",
    "knoten": "nodule",
    "rundherd": "nodule",
    "zyste": "cyst",
    "karzinom": "carcinoma",
    "geschwulst": "tumor",
    # Spanish
    "masa": "mass",
    "nodulo": "nodule",
    "quiste": "cyst",
    "neoplasia": "neoplasm",
    # Italian
    "tumore": "tumor",
    "lesione": "lesion",
    "cancro": "cancer",
    "massa": "mass",
    "metastasi": "metastasis",
    "cisti": "cyst",
    # Portuguese
    "lesao": "lesion",
    "cisto": "cyst",
}
LESION_LANGUAGES: dict[str, tuple[str, ...]] = {
    "en": tuple(LESION_WORDS) + ("tumour",),
    "fr": ("tumeur", "lesion", "cancer", "masse", "nodule", "metastase", "kyste", "carcinome", "neoplasie"),
    "de": (
        "tumor",
        "krebs",
        "lasion",
        "raumforderung",
        "knoten",
        "rundherd",
        "metastase",
        "zyste",
        "karzinom",
        "geschwulst",
        "neoplasie",
    ),
    "es": ("tumor", "lesion", "cancer", "masa", "nodulo", "metastasis", "quiste", "carcinoma", "neoplasia"),
    "it": ("tumore", "lesione", "cancro", "massa", "nodulo", "metastasi", "cisti", "carcinoma", "neoplasia"),
    "pt": ("tumor", "lesao", "cancer", "massa", "nodulo", "metastase", "cisto", "carcinoma", "neoplasia"),
}
# German compound tails shorter than 6 letters that still end a compound word ("Brustkrebs", "Nierenzyste")
COMPOUND_LESION_TAILS = ("krebs", "zyste", "tumor")

# Real words one edit from a vocabulary word: never read as a typo of it.
NOT_TYPOS = frozenset(
    {
        "drain",
        "grain",
        "river",
        "lever",
        "lives",
        "liner",
        "diver",
        "long",
        "legion",
        "region",
        "module",
        "ladder",
        "color",
        "colin",
        "penal",
        "humor",
        "rumor",
        "dancer",
        "canker",
        "mast",
        "mask",
        "moss",
        "miss",
        "less",
        "pass",
        "mess",
        "none",
        "done",
        "tone",
        "zone",
        "cone",
        "bond",
        "born",
        "lobe",
        "lumen",
        "rates",
        "breath",
        "bread",
        "gone",
        "lone",
        "bore",
        "hung",
        "rung",
        "sung",
        "cost",
        "cast",
        "lunar",
    }
)
FUZZY_SHORT_WORDS = ("lung", "bone", "cyst")  # the 4-letter words typos are looked for

# anatomy -> preset used for CT; MR always uses percentiles
CT_PRESET_FOR = {"lung": intensity.LUNG, "brain": intensity.BRAIN_CT, "bone": intensity.BONE}

# organ names of TotalSegmentator-style masks that make up each anatomy (for the anatomy prompt)
ORGAN_LABELS = {
    "pancreas": ("pancreas",),
    "liver": ("liver",),
    "kidney": ("kidney_left", "kidney_right"),
    "lung": (
        "lung_upper_lobe_left",
        "lung_lower_lobe_left",
        "lung_upper_lobe_right",
        "lung_middle_lobe_right",
        "lung_lower_lobe_right",
    ),
    "spleen": ("spleen",),
    "stomach": ("stomach",),
    "colon": ("colon",),
    "prostate": ("prostate",),
    "bladder": ("urinary_bladder",),
    "adrenal": ("adrenal_gland_left", "adrenal_gland_right"),
    "brain": ("brain",),
}

MAX_DESCRIPTION_CHARS = 200
LANGUAGE_NAMES = {"en": "English", "fr": "French", "de": "German", "es": "Spanish", "it": "Italian", "pt": "Portuguese"}


@dataclass(frozen=True)
class WordMatch:
    """Why a word was read as it was: the word as folded, the vocabulary word, its languages, and the edits
    (0 = as written)."""

    typed: str
    read_as: str
    means: str  # an anatomy key, or "lesion:<kind>"
    languages: tuple[str, ...]
    edits: int = 0

    def as_dict(self) -> dict:
        return {
            "typed": self.typed,
            "read_as": self.read_as,
            "means": self.means,
            "languages": list(self.languages),
            "edits": self.edits,
        }

    def describe(self) -> str:
        if self.edits:
            return f"'{self.typed}' read as '{self.read_as}', {self.edits} edit{'s' if self.edits > 1 else ''}"
        names = [LANGUAGE_NAMES[code] for code in self.languages if code != "en"]
        return f"'{self.typed}'" + (f", {'/'.join(names)}" if names and "en" not in self.languages else "")


@dataclass(frozen=True)
class Description:
    text: str
    anatomy: str | None
    lesion_word: str | None  # the English lesion kind: tumor, lesion, cancer, mass, nodule, cyst, ...
    evidence: tuple[WordMatch, ...] = ()

    @property
    def segment_name(self) -> str:
        return self.text if self.text else "tumor"

    def ct_preset(self) -> intensity.IntensityPreset:
        return CT_PRESET_FOR.get(self.anatomy or "", intensity.SOFT_TISSUE)

    def _ct_window(self) -> tuple[float, float]:
        window = self.ct_preset().window_hu
        assert window is not None  # every CT preset has its HU window
        return window

    def terminology(self) -> terminology.TerminologyEntry:
        """The Slicer/DICOM terminology entry of the segment: a lesion of this kind in this anatomy."""
        return terminology.lesion_entry(self.anatomy, self.lesion_word)

    def as_dict(self) -> dict:
        """The reading, as `tagseg describe --json` and `segment --json` ("reading") print it."""
        preset = self.ct_preset()
        return {
            "text": self.text,
            "segment_name": self.segment_name,
            "anatomy": self.anatomy,
            "lesion_word": self.lesion_word,
            "intensity": {
                "ct": {"preset": preset.name, "window_hu": list(self._ct_window())},
                "mr": {"preset": intensity.PERCENTILE.name, "percentiles": list(intensity.PERCENTILE.percentiles)},
            },
            "terminology": self.terminology().as_dict(),
            "words": [m.as_dict() for m in self.evidence],
        }

    def summary(self) -> str:
        """One line: what the CLI prints and the Slicer effect shows."""
        anatomy = (self.anatomy or "no anatomy").replace("_", " ")
        why = [m.describe() for m in self.evidence if m.means == self.anatomy]
        if why:
            anatomy += f" ({why[0]})"
        lo, hi = self._ct_window()
        return (
            f"{anatomy}; {self.lesion_word or 'no lesion word'}; CT window {lo:g}..{hi:g} HU; "
            f"{self.terminology().describe()}"
        )


def clean_text(text: object) -> str:
    """One clean printable line: undecodable bytes become '?', control characters (terminal escape
    sequences, NUL, newlines) and invisible ones become spaces, runs of spaces one. Used for `--text` and
    for every path or name echoed in a message."""
    # undecodable command-line bytes arrive as lone surrogates; control characters (NUL) would cut file headers
    return one_line(str(text))


def fold(text: str) -> str:
    """Lower case without accents: "Pancréas" -> "pancreas", "Drüse" -> "druse", "ß" -> "ss"."""
    decomposed = unicodedata.normalize("NFKD", text.casefold())
    return "".join(ch for ch in decomposed if not unicodedata.combining(ch))


@dataclass(frozen=True)
class _Entry:
    word: str
    means: str  # anatomy key or "lesion:<kind>"
    languages: tuple[str, ...]
    prefix: bool  # also matches the start of a longer word


def _vocabulary() -> tuple[_Entry, ...]:
    languages: dict[tuple[str, str], list[str]] = {}
    prefix: dict[tuple[str, str], bool] = {}

    def add(word: str, means: str, language: str, is_prefix: bool) -> None:
        key = (word, means)
        languages.setdefault(key, []).append(language)
        prefix[key] = prefix.get(key, False) or is_prefix

    for anatomy, words in ANATOMY_WORDS.items():
        for word in words:
            add(word, anatomy, "en", True)
    for anatomy, by_language in FOREIGN_ANATOMY_WORDS.items():
        for language, words in by_language.items():
            for word in words:
                add(word.rstrip("*"), anatomy, language, word.endswith("*"))
    for language, words in LESION_LANGUAGES.items():
        for word in words:
            add(word, f"lesion:{LESION_KINDS[word]}", language, True)
    return tuple(
        _Entry(word, means, tuple(dict.fromkeys(langs)), prefix[(word, means)])
        for (word, means), langs in languages.items()
    )


VOCABULARY = _vocabulary()
_ANATOMY_ORDER = {key: n for n, key in enumerate(ANATOMY_WORDS)}


def _exact(entry: _Entry, words: list[str], phrase: str) -> str | None:
    """The word (or phrase) of the text this entry matches without edits, or None."""
    if " " in entry.word:
        return entry.word if f" {entry.word} " in phrase else None
    lesion = entry.means.startswith("lesion:")
    for word in words:
        if word == entry.word or (entry.prefix and word.startswith(entry.word)):
            return word
        if lesion and (len(entry.word) >= 6 or entry.word in COMPOUND_LESION_TAILS) and entry.word in word:
            return word
    return None


def _edit_limit(word: str) -> int:
    if len(word) >= 7:
        return 2
    if len(word) >= 5:
        return 1
    return 1 if word in FUZZY_SHORT_WORDS else 0


def _typo_matches(unmatched: list[str]) -> list[WordMatch]:
    """Vocabulary words within the edit limit of words that matched nothing, closest first."""
    try:
        from rapidfuzz.distance import OSA
    except ImportError:  # tagseg lists rapidfuzz; without it, only exact words are read
        return []
    found = []
    for word in unmatched:
        if len(word) < 4 or word in NOT_TYPOS:
            continue
        best = None
        for entry in VOCABULARY:
            limit = _edit_limit(entry.word)
            if not limit or " " in entry.word or abs(len(entry.word) - len(word)) > limit:
                continue
            edits = OSA.distance(word, entry.word, score_cutoff=limit)
            if edits > limit:
                continue
            if best is None or edits < best[0]:
                best = (edits, entry)
        if best is not None:
            edits, entry = best
            found.append(WordMatch(word, entry.word, entry.means, entry.languages, edits))
    return sorted(found, key=lambda m: m.edits)


def parse_description(text: str | None) -> Description:
    """Read free text (see the module docstring); unknown words are fine, the text still names the segment."""
    clean = clean_text(text or "")[:MAX_DESCRIPTION_CHARS].strip()
    words = re.findall(r"[a-z]+", fold(clean))
    phrase = f" {' '.join(words)} "
    matches: list[WordMatch] = []
    for entry in VOCABULARY:
        typed = _exact(entry, words, phrase)
        if typed is not None:
            matches.append(WordMatch(typed, entry.word, entry.means, entry.languages))

    def is_lesion(m: WordMatch) -> bool:
        return m.means.startswith("lesion:")

    seen = {w for m in matches for w in m.typed.split()}
    typos = _typo_matches([w for w in dict.fromkeys(words) if w not in seen])
    # a typo counts only where the same kind of word was not found as written
    if not any(is_lesion(m) for m in matches):
        matches += [m for m in typos if is_lesion(m)]
    if not any(not is_lesion(m) for m in matches):
        matches += [m for m in typos if not is_lesion(m)]
    anatomy_hits = [m for m in matches if not is_lesion(m)]
    anatomy = None
    if anatomy_hits:
        anatomy = min(anatomy_hits, key=lambda m: (m.edits, _ANATOMY_ORDER[m.means])).means
    lesions = sorted(
        (m for m in matches if is_lesion(m)),
        key=lambda m: (m.edits, words.index(m.typed) if m.typed in words else len(words)),
    )
    lesion = lesions[0].means.split(":", 1)[1] if lesions else None
    if anatomy is None:
        weak = [m for m in lesions if m.read_as in WEAK_ANATOMY_WORDS and (m.typed == m.read_as or m.edits)]
        anatomy = next((WEAK_ANATOMY_WORDS[m.read_as] for m in weak if WEAK_ANATOMY_WORDS[m.read_as]), None)
        if anatomy is not None:
            matches.append(WordMatch(weak[0].typed, weak[0].read_as, anatomy, weak[0].languages, weak[0].edits))
    order = {w: n for n, w in reversed(list(enumerate(words)))}
    best: dict[tuple[str, str], WordMatch] = {}
    for m in matches:  # one reason per word and meaning: the longest vocabulary word, English first
        key = (m.typed, m.means)
        if key not in best or (len(m.read_as), "en" in m.languages) > (
            len(best[key].read_as),
            "en" in best[key].languages,
        ):
            best[key] = m
    evidence = sorted(best.values(), key=lambda m: (order.get(m.typed.split()[0], len(words)), m.means))
    return Description(clean, anatomy, lesion, tuple(evidence))

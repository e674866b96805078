"""From a typed description ("pancreatic tumor", "lung nodule") to anatomy, lesion kind and a segment name."""
from __future__ import annotations

import re
from dataclasses import dataclass

from . import intensity

# anatomy key -> words that name it (lower case, matched as whole words or word prefixes)
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

# words that suggest an anatomy only when no organ is named ("thyroid nodule" is not a lung nodule)
WEAK_ANATOMY_WORDS = {"nodule": "lung", "glioma": "brain", "metastasis": None}

LESION_WORDS = ("tumor", "tumour", "lesion", "cancer", "mass", "nodule", "metastasis", "metastases", "cyst",
                "carcinoma", "neoplasm", "malignancy")

# anatomy -> preset used for CT; MR always uses percentiles
CT_PRESET_FOR = {"lung": intensity.LUNG, "brain": intensity.BRAIN_CT, "bone": intensity.BONE}

# organ names of TotalSegmentator-style masks that make up each anatomy (for the anatomy prompt)
ORGAN_LABELS = {
    "pancreas": ("pancreas",), "liver": ("liver",), "kidney": ("kidney_left", "kidney_right"),
    "lung": ("lung_upper_lobe_left", "lung_lower_lobe_left", "lung_upper_lobe_right", "lung_middle_lobe_right",
             "lung_lower_lobe_right"),
    "spleen": ("spleen",), "stomach": ("stomach",), "colon": ("colon",), "prostate": ("prostate",),
    "bladder": ("urinary_bladder",), "adrenal": ("adrenal_gland_left", "adrenal_gland_right"), "brain": ("brain",),
}

MAX_DESCRIPTION_CHARS = 200


@dataclass(frozen=True)
class Description:
    text: str
    anatomy: str | None
    lesion_word: str | None

    @property
    def segment_name(self) -> str:
        return self.text if self.text else "tumor"

    def ct_preset(self) -> intensity.IntensityPreset:
        return CT_PRESET_FOR.get(self.anatomy or "", intensity.SOFT_TISSUE)


def clean_text(text: object) -> str:
    """One clean printable line: undecodable bytes become '?', control characters (terminal escape
    sequences, NUL, newlines) and invisible ones become spaces, runs of spaces one. Used for `--text` and
    for every path or name echoed in a message."""
    raw = str(text)
    # undecodable command-line bytes arrive as lone surrogates; control characters (NUL) would cut file headers
    raw = raw.encode("utf-8", "replace").decode("utf-8")
    raw = "".join(ch if ch.isprintable() else " " for ch in raw)
    return " ".join(raw.split())


def parse_description(text: str | None) -> Description:
    """Parse free text; unknown words are fine (no anatomy), the text still names the segment."""
    clean = clean_text(text or "")[:MAX_DESCRIPTION_CHARS].strip()
    low = clean.lower()
    words = re.findall(r"[a-z]+", low)
    anatomy = None
    for key, names in ANATOMY_WORDS.items():
        if any((" " in n and n in low) or any(w.startswith(n) for w in words) for n in names):
            anatomy = key
            break
    if anatomy is None:
        anatomy = next((WEAK_ANATOMY_WORDS[w] for w in words if WEAK_ANATOMY_WORDS.get(w)), None)
    lesion = next((w for w in words if any(w.startswith(l) for l in LESION_WORDS)), None)
    return Description(clean, anatomy, lesion)

"""How a description is read (tagseg.text, `tagseg describe`), measured on a table of descriptions, and the
API polish of issue 16 item 7 (Volume repr, library warnings, flag-free API errors, the CPU message).

The table (data/descriptions.tsv) is ours: English, typos, five other languages and organ-less texts, with
the reading a person expects. Its "fresh" rows were written after the vocabulary was frozen.
"""

import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from tagseg import cli, intensity, terminology
from tagseg.text import parse_description
from tagseg.volume import Volume

TABLE = Path(__file__).with_name("data") / "descriptions.tsv"
LANGUAGES = ("en", "fr", "de", "es", "it", "pt")
# Floors, set below what the final code measured (README: 256/259 overall, 40/42 on the fresh rows), so a
# change that breaks a handful of readings fails. A language or kind may drop one row more than the total.
MIN_ACCURACY = 0.95
MIN_FRESH_ACCURACY = 0.90
MIN_GROUP_ACCURACY = 0.85


def read_table() -> list[dict]:
    lines = [line for line in TABLE.read_text(encoding="utf-8").splitlines() if line and not line.startswith("#")]
    header = lines[0].split("\t")
    rows = [dict(zip(header, line.split("\t"), strict=False)) for line in lines[1:]]
    for row in rows:
        row["text"] = row.get("text") or ""
    return rows


def read_right(row: dict) -> bool:
    reading = parse_description(row["text"])
    want_anatomy = None if row["anatomy"] == "-" else row["anatomy"]
    want_lesion = None if row["lesion"] == "-" else row["lesion"]
    return reading.anatomy == want_anatomy and reading.lesion_word == want_lesion


def accuracy_by(rows: list[dict], key) -> dict:
    right, total = Counter(), Counter()
    for row in rows:
        group = key(row)
        total[group] += 1
        right[group] += read_right(row)
    return {group: right[group] / total[group] for group in total}


# ---------------------------------------------------------------------------------------------------------------
# the table


def test_table_covers_every_language_and_kind():
    rows = read_table()
    assert len(rows) >= 150
    assert {r["language"] for r in rows} == set(LANGUAGES)
    assert {r["kind"] for r in rows} == {"plain", "typo", "organless"}
    known = set(terminology.ANATOMIC_REGIONS) | {"bone", "-"}
    assert {r["anatomy"] for r in rows} <= known
    for language in LANGUAGES[1:]:
        anatomies = {r["anatomy"] for r in rows if r["language"] == language and r["kind"] == "plain"}
        assert len(anatomies) >= 10, f"{language}: only {sorted(anatomies)}"


def test_describe_accuracy_on_the_table_stays_above_its_floors():
    rows = read_table()
    overall = accuracy_by(rows, lambda r: "all")["all"]
    fresh = accuracy_by([r for r in rows if r["set"] == "fresh"], lambda r: "fresh")["fresh"]
    misses = [r["text"] for r in rows if not read_right(r)]
    assert overall >= MIN_ACCURACY, f"{overall:.3f}; misread: {misses}"
    assert fresh >= MIN_FRESH_ACCURACY, f"fresh rows {fresh:.3f}; misread: {misses}"
    for group, value in {
        **accuracy_by(rows, lambda r: r["language"]),
        **accuracy_by(rows, lambda r: r["kind"]),
    }.items():
        assert value >= MIN_GROUP_ACCURACY, f"{group}: {value:.3f}; misread: {misses}"


# ---------------------------------------------------------------------------------------------------------------
# what the engine's CT window depends on


@pytest.mark.parametrize(
    "text, preset",
    [
        ("lesion", intensity.SOFT_TISSUE),
        ("", intensity.SOFT_TISSUE),
        ("tumor", intensity.SOFT_TISSUE),
        ("lung tumor", intensity.LUNG),
        ("pulmonary nodule", intensity.LUNG),
        ("nodule", intensity.LUNG),
        ("nodules", intensity.SOFT_TISSUE),
        ("thyroid nodule", intensity.SOFT_TISSUE),
        ("brain tumor", intensity.BRAIN_CT),
        ("glioblastoma", intensity.BRAIN_CT),
        ("bone metastasis", intensity.BONE),
        ("pancreatic tumor", intensity.SOFT_TISSUE),
        ("liver metastasis of a pancreatic cancer", intensity.SOFT_TISSUE),
        ("long lesion", intensity.SOFT_TISSUE),
        ("lesion near the drain", intensity.SOFT_TISSUE),
        ("lesion in the transition zone", intensity.SOFT_TISSUE),
        ("tumeur pulmonaire", intensity.LUNG),
        ("Hirntumor", intensity.BRAIN_CT),
        ("lnug tumor", intensity.LUNG),
    ],
)
def test_ct_window_follows_the_reading(text, preset):
    assert parse_description(text).ct_preset() == preset


def test_english_readings_the_engine_relied_on_are_unchanged():
    cases = {
        "pancreatic tumor": ("pancreas", "tumor"),
        "liver metastasis": ("liver", "metastasis"),
        "liver metastasis of a pancreatic cancer": ("pancreas", "metastasis"),
        "thyroid nodule": ("head_neck", "nodule"),
        "strange blob": (None, None),
        "kidney cysts": ("kidney", "cyst"),
        "head and neck cancer": ("head_neck", "cancer"),
    }
    for text, (anatomy, lesion) in cases.items():
        reading = parse_description(text)
        assert (reading.anatomy, reading.lesion_word) == (anatomy, lesion), text
        assert reading.segment_name == text


# ---------------------------------------------------------------------------------------------------------------
# typos and languages


def test_typos_within_the_edit_limits_are_read_and_beyond_them_are_not():
    assert parse_description("pancreatik tumor").anatomy == "pancreas"  # 1 edit
    assert parse_description("pancraetic tumor").anatomy == "pancreas"  # a swap counts as 1 edit
    assert parse_description("pnacraetic tumor").anatomy == "pancreas"  # 2 edits, 10-letter word
    assert parse_description("pnacraetik tumor").anatomy is None  # 3 edits
    assert parse_description("kindey").anatomy == "kidney"  # 6 letters: 1 edit
    assert parse_description("kdney tumr").anatomy == "kidney"
    assert parse_description("kinedy").anatomy is None  # 6 letters: not 2 edits
    assert parse_description("lugn").anatomy == "lung"
    assert parse_description("lesion in the long axis").anatomy is None  # a real word, not a typo


def test_a_typo_never_overrides_a_word_written_right():
    reading = parse_description("lung lesoin near the brian")
    assert reading.anatomy == "lung" and reading.lesion_word == "lesion"
    assert [m.edits for m in reading.evidence if m.means == "lung"] == [0]


def test_accents_case_and_compounds_of_other_languages():
    assert parse_description("TUMEUR DU PANCRÉAS").anatomy == "pancreas"
    assert parse_description("Bauchspeicheldrüsenkrebs").anatomy == "pancreas"
    assert parse_description("Nebennierentumor").anatomy == "adrenal"  # not the kidney inside it
    assert parse_description("tumor do rim").anatomy == "kidney"
    assert parse_description("rim-enhancing lesion").anatomy is None  # Portuguese "rim" only as "do rim"
    reading = parse_description("métastase osseuse")
    assert (reading.anatomy, reading.lesion_word) == ("bone", "metastasis")
    assert {m.languages for m in reading.evidence} >= {("fr",)}


def test_without_rapidfuzz_exact_words_still_read(monkeypatch):
    monkeypatch.setitem(sys.modules, "rapidfuzz.distance", None)  # import fails
    assert parse_description("tumeur pulmonaire").anatomy == "lung"
    assert parse_description("pancreatik tumor").anatomy is None


# ---------------------------------------------------------------------------------------------------------------
# terminology


def test_terminology_codes_follow_anatomy_and_lesion_kind():
    lung = parse_description("tumeur pulmonaire").terminology()
    assert lung.serialized() == (
        "Segmentation category and type - 3D Slicer General Anatomy list~SCT^49755003^Morphologically Altered "
        "Structure~SCT^4147007^Mass~^^~Anatomic codes - DICOM master list~SCT^39607008^Lung~^^"
    )
    cyst = parse_description("kyste rénal").terminology()
    assert (cyst.type.value, cyst.region.value) == ("367643001", "64033007")
    plain = parse_description("lesion").terminology()
    assert plain.region is None and plain.type == terminology.MASS
    assert plain.serialized().endswith("~SCT^4147007^Mass~^^~~^^~^^")
    assert parse_description("bone lesion").terminology().region is None  # Slicer's lists have no "Bone" region
    for code in terminology.ANATOMIC_REGIONS.values():
        assert code.scheme == "SCT" and code.value.isdigit() and code.meaning


# ---------------------------------------------------------------------------------------------------------------
# tagseg describe


def run_cli(capsys, *args):
    code = cli.main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def test_describe_json_is_the_reading(capsys):
    code, out, err = run_cli(capsys, "describe", "tumeur du pancréas", "--json")
    assert code == 0 and err == ""
    data = json.loads(out)
    assert data == json.loads(json.dumps(parse_description("tumeur du pancréas").as_dict()))
    assert data["anatomy"] == "pancreas" and data["lesion_word"] == "tumor"
    assert data["segment_name"] == "tumeur du pancréas"
    assert data["intensity"]["ct"] == {"preset": "ct-soft-tissue", "window_hu": [-160.0, 240.0]}
    assert data["terminology"]["anatomic_region"] == {"scheme": "SCT", "code": "15776009", "meaning": "Pancreas"}
    assert {w["typed"] for w in data["words"]} == {"tumeur", "pancreas"}


def test_describe_text_output(capsys):
    code, out, _ = run_cli(capsys, "describe", "lnug nodule")
    assert code == 0
    fields = dict(
        line.split(None, 1) if not line.startswith("CT window") else ("CT window", line[10:].strip())
        for line in out.splitlines()
        if not line.startswith("word")
    )
    assert fields["anatomy"] == "lung" and fields["lesion"] == "nodule"
    assert fields["CT window"] == "ct-lung -1000..400 HU"
    assert fields["region"] == "Lung (SCT 39607008)"
    assert "'lnug' read as 'lung', 1 edit -> anatomy lung" in out


def test_describe_without_text_is_a_usage_error(capsys):
    code, _, err = run_cli(capsys, "describe")
    assert code == 2 and "tagseg: error:" in err


def test_slicer_status_shows_the_same_reading():
    sys.path.insert(0, str(Path(cli.__file__).resolve().parents[1]))
    from TAGSSegmentLib import wording

    status = wording.description_status("Lungentumor")
    assert status == f"Read as: {parse_description('Lungentumor').summary()}."
    assert "lung" in status and "-1000..400 HU" in status and "SCT 39607008" in status
    assert wording.description_status("  ") == ""


# ---------------------------------------------------------------------------------------------------------------
# API polish (issue 16 item 7)


def test_volume_repr_is_one_short_line():
    volume = Volume(np.zeros((40, 512, 512), np.int16), np.diag([0.7, 0.7, 2.5, 1.0]), name="ct")
    text = repr(volume)
    assert "\n" not in text and len(text) < 160 and "array(" not in text
    assert text == "Volume('ct', 512x512x40 voxels (IJK), int16, spacing 0.7x0.7x2.5 mm, origin RAS (0, 0, 0))"
    assert str(volume) == text


def _import_warnings(debug: bool) -> str:
    env = {k: v for k, v in os.environ.items() if k != "TAGSEG_DEBUG"}
    if debug:
        env["TAGSEG_DEBUG"] = "1"
    src = str(Path(cli.__file__).resolve().parents[1])
    code = f"import sys; sys.path.insert(0, {src!r}); import tagseg; import timm.models.layers"
    return subprocess.run(
        [sys.executable, "-W", "default", "-c", code], env=env, capture_output=True, text=True, timeout=240
    ).stderr


def test_library_deprecation_warnings_are_filtered_at_import():
    assert "FutureWarning" in _import_warnings(debug=True), "timm no longer warns: this test proves nothing"
    quiet = _import_warnings(debug=False)
    assert "FutureWarning" not in quiet and "DeprecationWarning" not in quiet, quiet


def test_api_errors_name_no_command_line_flags():
    from tagseg.errors import PromptError
    from tagseg.session import Session

    volume = Volume(np.zeros((4, 16, 16), np.int16), np.eye(4))
    session = Session(volume, device="cpu")
    try:
        with pytest.raises(PromptError) as info:
            session.predict()
    finally:
        session.close()
    assert "--" not in str(info.value) and "include point or a box" in str(info.value)
    assert cli.with_option_names(str(info.value)).endswith(
        "add an include point (--point R,A,S) or a box (--box R1,A1,S1,R2,A2,S2)"
    )


def test_cpu_message_only_when_a_gpu_was_asked_for(monkeypatch):
    import torch

    from tagseg.devices import resolve_device
    from tagseg.errors import DeviceError

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    said = []
    assert resolve_device("auto", said.append) == "cpu" and said == []
    with pytest.raises(DeviceError) as info:
        resolve_device("cuda", said.append)
    assert "CUDA is not available" in str(info.value) and "--" not in str(info.value)
    assert "--device cpu" in cli.with_option_names(str(info.value))

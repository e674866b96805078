"""The standard codes of a segment: the 3D Slicer terminology entry a description maps to.

Slicer (and DICOM SEG) describe a segment by a category, a type and an anatomic region, each a
(coding scheme, code value, code meaning) triple. This is our own small table of the entries tagseg
needs, not a copy of Slicer's lists. The codes were read on 2026-12-02 from the Slicer/Slicer
repository (commit 583e9b37d50e), Modules/Loadable/Terminologies/Resources/:

- category and type: `SegmentationCategoryTypeModifier-SlicerGeneralAnatomy.json`, context
  "Segmentation category and type - 3D Slicer General Anatomy list" (the list Slicer loads by default).
  Its "Morphologically Altered Structure" category has the lesion types Mass and Cyst; Nodule and
  Neoplasm exist only in the DICOM master list, so every solid lesion word maps to Mass;
- anatomic region: `AnatomicRegionAndModifier-DICOM-Master.json`, context
  "Anatomic codes - DICOM master list". It has no region for bone in general (only named bones), so
  bone lesions carry no region; "colon" also stands for the rectum (tagseg's anatomy key covers both).

All codes are SNOMED CT (scheme designator "SCT").
"""

from __future__ import annotations

from dataclasses import dataclass

CATEGORY_TYPE_CONTEXT = "Segmentation category and type - 3D Slicer General Anatomy list"
ANATOMIC_CONTEXT = "Anatomic codes - DICOM master list"


@dataclass(frozen=True)
class Code:
    """One coded concept: (coding scheme designator, code value, code meaning)."""

    scheme: str
    value: str
    meaning: str

    def triple(self) -> str:
        """Slicer's serialised form, `SCT^4147007^Mass`."""
        return f"{self.scheme}^{self.value}^{self.meaning}"

    def as_dict(self) -> dict:
        return {"scheme": self.scheme, "code": self.value, "meaning": self.meaning}


MORPHOLOGICALLY_ALTERED = Code("SCT", "49755003", "Morphologically Altered Structure")
MASS = Code("SCT", "4147007", "Mass")
CYST = Code("SCT", "367643001", "Cyst")

# lesion kind (tagseg.text's canonical lesion words) -> type; any other kind, or none, is a Mass
LESION_TYPES = {"cyst": CYST}

# tagseg anatomy key -> anatomic region
ANATOMIC_REGIONS: dict[str, Code] = {
    "pancreas": Code("SCT", "15776009", "Pancreas"),
    "liver": Code("SCT", "10200004", "Liver"),
    "kidney": Code("SCT", "64033007", "Kidney"),
    "lung": Code("SCT", "39607008", "Lung"),
    "brain": Code("SCT", "12738006", "Brain"),
    "breast": Code("SCT", "76752008", "Breast"),
    "colon": Code("SCT", "71854001", "Colon"),
    "prostate": Code("SCT", "41216001", "Prostate"),
    "bladder": Code("SCT", "89837001", "Bladder"),
    "stomach": Code("SCT", "69695003", "Stomach"),
    "adrenal": Code("SCT", "23451007", "Adrenal gland"),
    "spleen": Code("SCT", "78961009", "Spleen"),
    "lymph_node": Code("SCT", "59441001", "Lymph node"),
    "head_neck": Code("SCT", "774007", "Head and Neck"),
}


@dataclass(frozen=True)
class TerminologyEntry:
    category: Code
    type: Code
    region: Code | None

    def serialized(self) -> str:
        """The string `vtkSegment::SetTerminology` takes (Slicer's `SerializeTerminologyEntry` layout:
        context~category~type~type modifier~anatomic context~region~region modifier)."""
        region = self.region.triple() if self.region else "^^"
        return "~".join(
            (
                CATEGORY_TYPE_CONTEXT,
                self.category.triple(),
                self.type.triple(),
                "^^",
                ANATOMIC_CONTEXT if self.region else "",
                region,
                "^^",
            )
        )

    def as_dict(self) -> dict:
        return {
            "context": CATEGORY_TYPE_CONTEXT,
            "category": self.category.as_dict(),
            "type": self.type.as_dict(),
            "anatomic_context": ANATOMIC_CONTEXT if self.region else None,
            "anatomic_region": self.region.as_dict() if self.region else None,
            "serialized": self.serialized(),
        }

    def describe(self) -> str:
        where = f", {self.region.meaning} (SCT {self.region.value})" if self.region else ""
        return f"{self.type.meaning} (SCT {self.type.value}){where}"


def lesion_entry(anatomy: str | None, lesion_kind: str | None) -> TerminologyEntry:
    """The entry of a lesion of this kind in this anatomy (either may be None: a Mass, no region)."""
    return TerminologyEntry(
        MORPHOLOGICALLY_ALTERED, LESION_TYPES.get(lesion_kind or "", MASS), ANATOMIC_REGIONS.get(anatomy or "")
    )

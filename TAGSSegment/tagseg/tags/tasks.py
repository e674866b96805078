"""The published per-dataset TAGS tasks (TAGS_SPEC §4.1–§4.3): what each trained checkpoint expects.

A TAGS checkpoint is only valid for the data it was trained on: the CT is clipped to that dataset's HU window
and z-scored with its foreground mean/std, and the 3rd input channel is that dataset's organ mask. Keeping the
numbers in one table lets the converter stamp them into a checkpoint's metadata and lets inference check them.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..text import ORGAN_LABELS

OBJECT_WORD_MODES = ("dataset-key", "organ")


@dataclass(frozen=True)
class Task:
    """One dataset the authors trained on, with the preprocessing a checkpoint trained on it needs."""

    # fmt: off
    key: str                          # the authors' `--data` value
    dataset: str                      # human-readable dataset name
    anatomy: str                      # tagseg anatomy key (tagseg.text.ANATOMY_WORDS / ORGAN_LABELS)
    window: tuple[float, float]       # HU clip window (lo, hi) before z-scoring
    mean: float                       # foreground mean used for z-scoring (after clipping)
    std: float                        # foreground std used for z-scoring
    spatial_index: tuple[int, int, int]  # transpose from the NIfTI voxel order to [D, H, W]
    split: tuple[int, int, int]       # fold-0 case counts (train, val, test)
    tumour_label: int = 2             # label value of the tumour in the dataset's ground truth
    source: str = "TAGS"              # "TAGS", or "3DSAM-adapter only" when TAGS never trained on it
    # fmt: on

    @property
    def organ_file(self) -> str:
        """The organ-mask file the authors' loader reads next to the image: `<anatomy>.nii.gz` for every dataset."""
        return f"{self.anatomy}.nii.gz"

    @property
    def organ_word(self) -> str:
        """The object word for the "organ" variant of the CLIP prompts (§10 #1): the anatomy itself."""
        return self.anatomy

    @property
    def dataset_key(self) -> str:
        """The word the authors' code puts into the CLIP prompts: literally the dataset key (§3.4)."""
        return self.key

    @property
    def organ_labels(self) -> tuple[str, ...]:
        """TotalSegmentator-style organ names whose union is the organ-mask channel."""
        return ORGAN_LABELS.get(self.anatomy, (self.anatomy,))

    @property
    def used_by_tags(self) -> bool:
        return self.source == "TAGS"

    def object_word(self, mode: str = "dataset-key") -> str:
        """The CLIP object word: the authors' dataset key ("dataset-key") or the organ name ("organ")."""
        if mode == "dataset-key":
            return self.dataset_key
        if mode == "organ":
            return self.organ_word
        raise ValueError(f"object word mode {mode!r} is not one of {', '.join(OBJECT_WORD_MODES)}")

    def intensity(self) -> dict:
        """The checkpoint-metadata form of the intensity normalisation."""
        return {
            "window": [float(self.window[0]), float(self.window[1])],
            "mean": float(self.mean),
            "std": float(self.std),
        }


# key, dataset, anatomy, HU window, foreground mean and std, NIfTI -> [D, H, W] transpose, fold-0 split
_TABLE = (
    Task("kits", "KiTS21", "kidney", (-54.0, 247.0), 59.53867, 55.457336, (0, 1, 2), (209, 30, 61)),
    Task("lits", "LiTS17", "liver", (-48.0, 163.0), 60.057533, 40.198017, (2, 1, 0), (83, 11, 24)),
    Task("pancreas", "MSD Task07 Pancreas", "pancreas", (-39.0, 204.0), 68.45214, 63.422806, (2, 1, 0), (196, 28, 57)),
    # 3DSAM-adapter's fourth dataset; TAGS never trained on it. MSD Colon labels the cancer 1, not 2.
    Task(
        "colon",
        "MSD Task10 Colon",
        "colon",
        (-57.0, 175.0),
        65.175035,
        32.651197,
        (2, 1, 0),
        (89, 11, 26),
        tumour_label=1,
        source="3DSAM-adapter only",
    ),
)
TASKS: dict[str, Task] = {task.key: task for task in _TABLE}


def task_for_anatomy(anatomy: str | None, *, include_adapter_only: bool = False) -> Task | None:
    """The TAGS task trained on this anatomy; None when TAGS has none (colon is 3DSAM-adapter only unless asked)."""
    if not anatomy:
        return None
    for task in TASKS.values():
        if task.anatomy == anatomy.strip().lower() and (task.used_by_tags or include_adapter_only):
            return task
    return None

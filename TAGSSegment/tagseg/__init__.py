"""tagseg: interactive 3D tumour segmentation from clicks, boxes, a typed description and an organ mask.

    from tagseg import load_volume, Session
    vol = load_volume("ct.nii.gz")
    s = Session(vol)                      # model="auto", device="auto"
    s.set_text("pancreatic tumor")
    s.add_point((r, a, s_))               # RAS mm
    mask = s.predict()                    # uint8 Volume on vol's grid
"""
from .errors import DeviceError, InputError, ModelError, PromptError, TagsegError
from .io import load_volume, save_segmentation, save_volume
from .session import Session
from .volume import Volume

__version__ = "0.1.0"

__all__ = ["Volume", "Session", "load_volume", "save_volume", "save_segmentation", "TagsegError", "InputError",
           "PromptError", "ModelError", "DeviceError", "__version__"]

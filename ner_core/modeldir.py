"""Moved: model directories are :mod:`ner_core.artifacts.modeldir` and their file names
:mod:`ner_core.artifacts.layout` (this path keeps working; see :mod:`ner_core._moved`)."""

from ner_core._moved import moved

__getattr__ = moved(
    __name__,
    {
        **{
            n: "ner_core.artifacts.modeldir"
            for n in ("LoadedModel", "load_model_dir", "save_model_dir", "recover_model_dir")
        },
        **{n: "ner_core.artifacts.layout" for n in ("FORMAT_VERSION", "ModelDirError")},
    },
)
